"""A small, fully trained text-to-image world that runs on a CPU.

``world``: the deterministic procedural generator of 32×32 images and captions.
``train``: seeded training of a toy CLIP, VAE and UNet, assembled into ordinary model folders.
``evaluate``: zero-shot accuracy of the toy CLIP and prompt accuracy of the toy SD samples.
``assets``: the shipped weights and the model folders materialised from them.
``detector``: the world's target detector, a CNN independent of the toy CLIP.
``tasks``: the demo's three unlearning tasks (prompts, vocabulary, labels, the target judge).
``options``: what the ``recare toyworld`` commands are asked (the training recipe among it).
"""
