"""A small, fully trained text-to-image world that runs on a CPU (issue 5).

``world``: the deterministic procedural generator of 32×32 images and captions.
``train``: seeded training of a toy CLIP, VAE and UNet, assembled into ordinary model folders.
``evaluate``: zero-shot accuracy of the toy CLIP and prompt accuracy of the toy SD samples.
``assets``: the shipped weights and the model folders materialised from them.
"""
