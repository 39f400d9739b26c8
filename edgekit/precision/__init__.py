"""Choosing each layer's precision from measurements: the sensitivity analysis (int8's accuracy loss
and latency gain per layer), the mixed plan built from it, and accuracy-aware int8. Above `backends`
(it builds and times engines) and `calibrate` (whose scales it uses)."""
