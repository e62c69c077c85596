"""The only code that loads weights: device and dtype choice, CLIP and Stable Diffusion loading,
fingerprints, and the tiny offline models used by tests and the demo."""
