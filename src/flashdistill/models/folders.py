"""The folder layout of a saved flashdistill model (`FlowModel.save_pretrained`, models/mmdit.py; a LoRA teacher,
models/lora.py): `flashdistill_model.json` (our config; for a LoRA also its base and settings) beside diffusers'
`transformer/` folder (the full weights, or a LoRA's adapter file). A leaf: the names alone, so the models, the
shipped teachers and the engine read one layout without importing each other."""

CONFIG_FILE = "flashdistill_model.json"
TRANSFORMER_FOLDER = "transformer"
