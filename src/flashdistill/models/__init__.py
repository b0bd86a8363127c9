"""Models behind the one interface `v = model(z_t, t, cond)`: the MMDiT adapter (`mmdit`) and text encoders (`text`)."""
