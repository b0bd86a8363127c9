"""The paper's three studies (data composition, teacher guidance, task mixture) as one command each:
`spec` (arms, findings, the paper's numbers, presets), `runner` (arms x seeds, resumable), `report` (tables with
95% confidence intervals, verdicts, curves). `flashdistill study --help` explains the command."""
