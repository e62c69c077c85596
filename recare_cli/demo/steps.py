"""The demo's calls into the stages: sampling, the CARE-set (mine → cluster → refine), inversion, erasure.

Each writes its file into the task's folder and returns it; a finished file is reused as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recare_cli.demo.settings import DemoSettings, model_tag, scaled_recipe
from recare_cli.io.atomic import atomic_write_bytes
from recare_cli.io.jsonl import dumps_json, write_jsonl
from recare_cli.io.streams import open_output


def write_json(path: Path, doc: Any) -> None:
    atomic_write_bytes(path, dumps_json(doc))


def sample_prompts(prompts: list[str], out: Path, manifest: Path, *, model: str, weights: list[Path],
                   embeddings: list[Path], n: int, seed: int, s: DemoSettings,
                   for_mining: bool = False) -> list[dict[str, Any]]:
    """run_sample into ``out`` with the evaluation sampler (``for_mining``: the mining one); the manifest is
    written once every image exists (resume: finished images stay)."""
    from recare_cli.io.prompts import PromptRow
    from recare_cli.stages.sample import SampleOptions, run_sample

    records: list[dict[str, Any]] = []
    rows = [PromptRow(index=i, line=i + 1, prompt=p) for i, p in enumerate(prompts)]
    opts = SampleOptions(out=out, images_per_prompt=n, seed=seed, model=model, weights=tuple(weights),
                         embeddings=tuple(embeddings), steps=s.mine_steps if for_mining else s.steps,
                         guidance=s.guidance, height=32, width=32,
                         scheduler=s.mine_scheduler if for_mining else s.scheduler, batch_size=32, device="cpu",
                         dtype="fp32")
    run_sample(opts, rows, emit=records.append)
    with open_output(manifest, binary=False) as fh:
        write_jsonl(fh, records)
    return records


def careset_path(folder: Path) -> Path:
    return folder / "care.json"


def careset(folder: Path, task: Any, target_images: list[Path], clip: str, s: DemoSettings) -> Path:
    from recare_cli.stages.cluster import ClusterOptions, run_clustering
    from recare_cli.stages.mine import MineOptions, run_mining
    from recare_cli.stages.refine import RefineOptions, run_refinement
    from recare_cli.toyworld.tasks import vocabulary

    care = careset_path(folder)
    if care.is_file():
        return care
    words = vocabulary(task)
    atomic_write_bytes(folder / "vocab.txt", "".join(w + "\n" for w in words).encode())
    stream = run_mining(MineOptions(images=str(folder / "target-images"), target=task.target, top_k=s.top_k,
                                    top_n=s.top_n, vocab=str(folder / "vocab.txt"), strict=True, clip=clip,
                                    device="cpu", dtype="fp32", no_cache=True), target_images)
    with open_output(folder / "candidates.jsonl", binary=False) as fh:
        stream.write(fh)
    # k-means on the embeddings, not on t-SNE points: t-SNE of ~20 words regrouped them when the
    # embeddings changed in the 7th digit, and the CARE-set, and every figure after it, differed
    # between machines (experiments/cluster_stability.py; docs/benchmarks.md)
    run_clustering(stream, ClusterOptions(candidates=str(folder / "candidates.jsonl"), clusters=s.clusters,
                                          drop_extremes=s.drop_extremes, space=s.cluster_space, seed=s.seed))
    with open_output(folder / "clustered.jsonl", binary=False) as fh:
        stream.write(fh)
    refined = run_refinement(stream, RefineOptions(source=str(folder / "clustered.jsonl"), alpha=s.alpha,
                                                   property=task.prop))
    write_json(care, refined.to_recare())
    return care


def invert_path(folder: Path) -> Path:
    return folder / "adv.safetensors"


def invert(folder: Path, task: Any, target_images: list[Path], sd: str, s: DemoSettings) -> Path:
    from recare_cli.stages.invert import InvertOptions, run_invert

    adv = invert_path(folder)
    if not adv.is_file():
        opts = InvertOptions(images=str(folder / "target-images"), target=task.target, output=str(adv),
                             initializer=task.initializer, property=task.prop, strict=True,
                             rounds=s.invert_rounds, erase_iterations=s.invert_erase_iterations,
                             erase_lr=s.invert_erase_lr,
                             train_method=s.train_method, ddim_steps=s.ddim_steps, steps=s.invert_steps,
                             lr=s.invert_lr, resolution=32, seed=s.seed, model=sd, device="cpu",
                             resume=Path(f"{adv}.ckpt").is_file())
        run_invert(opts, target_images)
    return adv


def erase_path(folder: Path, method: str, seed: int, s: DemoSettings) -> Path:
    return folder / f"{model_tag(method, seed, s)}.safetensors"


# The erasers that read the demo's CARE-set and the adversarial tokens; published ESD, UCE, AGE and AdvUnlearn
# erase the target alone, as their authors' recipes do
USES_CARESET = ("recare", "noretain")
USES_TOKENS = ("stereo", "recare", "noretain")


def erase_options(folder: Path, task: Any, method: str, care: Path, adv: Path, sd: str, s: DemoSettings,
                  seed: int, *, out: Path | None = None, boost: float = 1.0) -> Any:
    """``recare erase``'s options for ``method`` (a demo name): its recipe by the one scaling rule
    (``settings.scaled_recipe``, ``boost`` times its rate), its toy inputs (``baselines``), writing ``out``
    (default: the method's file in ``folder``)."""
    from recare_cli.demo.baselines import write_inputs
    from recare_cli.stages.erase import EraseOptions

    out = erase_path(folder, method, seed, s) if out is None else out
    return EraseOptions(target=task.target, care=str(care) if method in USES_CARESET else None,
                        adversarial=str(adv) if method in USES_TOKENS else None,
                        **scaled_recipe(method, task, s, boost), **write_inputs(folder, method, task), seed=seed,
                        resolution=32, model=sd, device="cpu", output=str(out), checkpoint_every=20,
                        resume=Path(f"{out}.ckpt").is_file())


def erase(folder: Path, task: Any, method: str, care: Path, adv: Path, sd: str, s: DemoSettings,
          seed: int, *, out: Path | None = None, boost: float = 1.0) -> Path:
    from recare_cli.stages.erase import run_erase

    opts = erase_options(folder, task, method, care, adv, sd, s, seed, out=out, boost=boost)
    if not Path(opts.output).is_file():
        run_erase(opts)
    return Path(opts.output)


def attack_path(folder: Path, tag: str) -> Path:
    return folder / f"cce-{tag}.safetensors"


def attack_token(task: Any) -> str:
    """The token CCE learns for ``task`` (``recare attack``'s name for it)."""
    from recare_cli.stages.attack import AttackOptions

    return AttackOptions(images="", target=task.target, output="").token()


def attack(folder: Path, task: Any, target_images: list[Path], sd: str, weights: list[Path], tag: str,
           s: DemoSettings) -> Path:
    """CCE against the model ``weights`` on the base ``sd`` (tagged ``tag``), on invert's images."""
    from recare_cli.stages.attack import AttackOptions, run_attack

    out = attack_path(folder, tag)
    if not out.is_file():
        opts = AttackOptions(images=str(folder / "target-images"), target=task.target, output=str(out),
                             weights=tuple(str(w) for w in weights), initializer=task.initializer,
                             property=task.prop, steps=s.attack_steps, batch_size=s.attack_batch_size,
                             accumulation=s.attack_accumulation, lr=s.attack_lr, num_images=len(target_images),
                             resolution=32, strict=True, seed=s.seed, model=sd, device="cpu",
                             checkpoint_every=50, resume=Path(f"{out}.ckpt").is_file())
        run_attack(opts, target_images)
    return out
