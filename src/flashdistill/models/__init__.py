"""Models behind the one interface `v = model(z_t, t, cond)`: the MMDiT adapter (`mmdit`) and text encoders (`text`);
and the world judge's reader network (`reader`), also REPA's target encoder."""
