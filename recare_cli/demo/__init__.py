"""The offline demo: the whole method on the shipped toy world, compared with the baselines.

For one task (toyworld.tasks) it runs every stage through the same library functions the CLI
commands call, writing each stage's file into ``out/<task>/``:

1. ``sample`` the base model on the target prompts → the target images (as the paper generates them);
2. ``mine`` → ``cluster`` → ``refine`` over the world's vocabulary → ``care.json``;
3. ``invert`` → ``adv.safetensors`` (adversarial tokens);
4. ``erase`` with the published baselines ESD, STEREO and UCE and with ReCARE, each at its authors' recipe scaled
   by one rule (``settings.scaled_recipe``; the baselines' toy inputs in ``baselines``); ``--with`` adds AGE,
   AdvUnlearn and ReCARE without its retain loss;
5. ``sample`` base and erased models on target, benign and unrelated prompts, same seeds;
6. judge: how often the target appears, by the toy CLIP (tasks.shows_target) and by the world's detector
   (toyworld.detector: an independent CNN, as the paper judges with NudeNet and classifiers), the CARE score of the
   benign concept (``score --metric care`` with the world's labels), CLIP score on unrelated prompts.

Finished files are reused when the demo is run again with the same settings (a killed run resumes);
a folder holding a run with other settings is refused.

Modules: ``settings`` (what a run is asked, the scaling rule), ``baselines`` (the toy inputs), ``steps`` (the
stage calls), ``judge`` (sampling and judging one model), ``run`` (one task end to end), ``report`` (the table
and the bars), ``grid`` (the labelled image grid).
The demo uses the stages and the toy world; nothing in the method imports it.
"""
