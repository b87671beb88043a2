"""`fskp train` as a Ray Train job: the worker loop (``train_func``) and the driver (``run_training``).

Data flow: prepared dataset → shot selection → Ray Data stream of the unlabeled pool (sharded across
workers) + the labeled shots (every worker holds them) → ``models.train_step`` → checkpoints under the run's
storage path → evaluation on the test split → one MLflow run.
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

CHECKPOINT_FILE = "model.pt"


@dataclass(frozen=True)
class TrainJob:
    """Everything one training run depends on; logged whole to MLflow and stored in the checkpoint."""

    data: str                               # prepared dataset folder
    shots: str = "10"                       # labeled examples: a count ("10") or a share of the train split ("5%")
    selection: str = "kmeans"               # kmeans (paper §3.6) | random (the "-kmeans" ablation)
    variant: str = "full"                   # models/variants.py: full | supervised | xiao | the ablations
    iterations: int = 20000                 # paper: 20k
    backbone: str = "resnet50"              # any timm backbone with features_only; paper: resnet50
    size: int = 128                         # working resolution; other than the prepared one: resized in the stream
    seed: int = 0                           # paper: all seeds 0
    coefficients: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 0.1)   # few-shot, recon, 2D, 3D (§3.6)
    lr: float = 1e-4                        # Adam, betas (0.9, 0.99) (Supplement A)
    lr_schedule: str = "constant"           # constant (paper) | cosine (decays to lr/100; fskp label)
    edge_weight_lr_scale: float = 1.0       # Eq. 12's gamma learns at this many times lr (AutoLink's code: 512)
    rotation_deg: float = 60.0              # augmentation / Eq. 3 rotation range (Supplement A: +-60)
    flip_p: float = 0.5                     # augmentation / Eq. 3 flip probability (Supplement A: 0.5)
    transform_ramp: float = 1.0             # share of the run over which Eq. 3's ranges grow (Supplement A: 1.0)
    mask_patch: int = 16                    # Eq. 9's masking patch side in pixels (Supplement A: 16 at 128 px)
    labeled_apart: bool = False             # labeled images detected in their own pass: BN statistics not shared
    heatmap_target: float = 0.0             # coefficient of a KL term pulling Eq. 1's weights on the labeled images
                                            # to a Gaussian at the label (not the paper's; 0 = off; models/losses.py)
    batch_norm: str = "batch"               # batch | frozen-backbone (pretrained statistics) | frozen (models/config.py)
    unlabeled_batch: int = 16               # per worker; labeled batch is min(16, n_shots)
    workers: int = 1                        # Ray Train workers (data-parallel)
    gpu: bool = False                       # one GPU per worker (or gpu_fraction of one)
    gpu_fraction: float = 1.0               # <1 lets several small runs share a GPU
    cpus_per_worker: float | None = None    # logical CPUs per worker; None: the node's CPUs less Ray Data's share
    precision: str = "auto"                 # auto (bf16 where the device runs it natively: models/precision.py) | bf16 | fp32
    perceptual_vit: str = "vit_small_patch8_224.dino"   # perceptual network (Eq. 9): [75]'s self-supervised DINO ViT
    backbone_weights: str = "auto"          # auto | hub | package | none | a file (models/pretrained.py)
    perceptual_weights: str = "auto"        # the perceptual ViT's weights, chosen the same way
    selection_backbone: str = "vgg16"       # k-means shot selection's features (§3.6: VGG-16)
    selection_weights: str = "auto"         # its weights, chosen the same way
    pool: str | tuple[str, ...] | None = None   # unlabeled pool: image folders / videos (default: the train split)
    pool_splits: tuple[str, ...] | None = None  # prepared splits in the pool (default: train, or none with --pool)
    pool_crop: tuple[float, float, float, float] | None = None   # crop of raw pool images/frames (source px)
    evaluate_split: str | None = "test"     # split scored at the end (None: the caller scores, e.g. fskp label)
    checkpoint_every: int = 1000            # iterations between checkpoints
    log_every: int = 50                     # iterations between loss reports (each is a host sync)
    experiment: str = "fskp"                # MLflow experiment
    tracking_uri: str | None = None         # MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)
    storage_path: str | None = None         # Ray Train storage (shared storage on a cluster); default ./runs
    run_name: str | None = None             # Ray Train run name / MLflow run name (default derived)
    max_failures: int = 2                   # worker failures survived by resuming from the last checkpoint
    fail_at_step: int | None = None         # testing only: kill rank 0 once at this step
    threads: int | None = None              # torch intra-op threads per worker (default: the CPUs Ray gave it)
    stall_timeout: float = 600.0            # seconds without an unlabeled batch (or a collective) before stopping
    record_rank_state: bool = False         # testing: each worker writes the pool ids it saw and its weights' digest
    resume: bool = False                    # stable Ray Train run name (train_run_name): continue its last checkpoint
    init_from: str | None = None            # a checkpoint (folder, model.pt or URI) whose weights start the run: a
                                            # refine round continues from the last one; optimizer and step start afresh

    def default_name(self, card_name: str) -> str:
        return f"{card_name}-{self.shots.replace('%', 'pct')}shots-{self.selection}-{self.variant}-seed{self.seed}"


# ---- worker side -------------------------------------------------------------------------------------
def build_model(card, job: TrainJob):
    """The model, loss and optimiser settings of a job (paper defaults unless the job says otherwise)."""
    from models.config import LossConfig, ModelConfig, OptimConfig
    from models.model import KeypointModel
    from models.variants import get_variant

    few_shot, recon, geo2d, geo3d = job.coefficients
    decoding = "argmax" if get_variant(job.variant).heatmap_regression else "soft-argmax"
    model_cfg = ModelConfig.from_card(card, backbone=job.backbone, backbone_weights=job.backbone_weights,
                                      keypoint_decoding=decoding, batch_norm=job.batch_norm,
                                      image_size=job.size, perceptual_vit=job.perceptual_vit,
                                      perceptual_weights=job.perceptual_weights)
    loss_cfg = LossConfig(variant=job.variant, few_shot=few_shot, recon=recon, geo2d=geo2d, geo3d=geo3d,
                          rotation_deg=job.rotation_deg, flip_p=job.flip_p,
                          transform_ramp=job.transform_ramp, mask_patch=job.mask_patch,
                          labeled_apart=job.labeled_apart, heatmap_target=job.heatmap_target)
    optim_cfg = OptimConfig(lr=job.lr, lr_schedule=job.lr_schedule, iterations=job.iterations, unlabeled_batch=job.unlabeled_batch,
                            seed=job.seed, precision=job.precision, edge_weight_lr_scale=job.edge_weight_lr_scale)
    return KeypointModel(model_cfg), loss_cfg, optim_cfg


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Rank 0 records what it resolved on its own node (precision, threads) in the driver's MLflow run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def say(message: str) -> None:
    """A progress line from a Train worker, once: Ray Train patches ``print`` on workers to both echo and log
    the line, and the driver showed every progress line twice."""
    import sys

    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def log_to_mlflow(tracking_uri: str, run_id: str, metrics: dict, step: int) -> None:
    """Rank 0 logs the losses along training straight into the driver's MLflow run."""
    import mlflow.entities
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    MlflowClient(tracking_uri).log_batch(run_id, metrics=[
        mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items() if k != "step"])


def data_parallel(model, world: int, rank: int, seed: int):
    """Several workers: DistributedDataParallel through Ray Train's ``prepare_model`` (the model computes its
    losses inside ``forward``, so DDP's bucketed all-reduce overlaps backward).  ``find_unused_parameters``
    because an ablation variant leaves some networks out of some losses.  Every rank starts from rank 0's
    weights (DDP broadcasts them); afterwards each rank draws its own transforms, masks and pairings
    (seed + rank).  The global unlabeled batch is ``unlabeled_batch x workers`` and the learning rate is not
    scaled with it (paper: one GPU, batch 16)."""
    import numpy as np
    import torch

    if world > 1:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model, move_to_device=False,
                                              parallel_strategy_kwargs={"find_unused_parameters": True})
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    return model


def weights_digest(model) -> str:
    """sha256 of every parameter, in order: equal on every rank of a correct data-parallel run.  (Buffers such
    as BatchNorm statistics are not: DDP copies rank 0's into each forward, then each rank's batch moves its own.)"""
    import hashlib

    h = hashlib.sha256()
    for name, value in model.named_parameters():
        h.update(name.encode())
        h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def check_ranks_agree(model, step: int, world: int) -> None:
    """Stop when the ranks' weights drifted apart (a data-parallel defect, never a result to keep)."""
    if world <= 1:
        return
    import torch
    import torch.distributed as dist

    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    low, high = sums.clone(), sums.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    drift = float(((high - low).abs() / (high.abs() + 1e-12)).max())
    if drift > 1e-6:
        raise RuntimeError(f"the {world} workers' weights differ at step {step} (relative drift {drift:.2e}): "
                           f"data-parallel training is broken; the last agreeing checkpoint is kept")


def _to_batch(images_uint8, device, size: int | None = None):
    """uint8 [B, H, W, 3] → float [B, 3, size, size] in [0, 1], channels-last (resized when H != size;
    keypoints in [-1, 1] are unchanged by the resize)."""
    import torch

    x = images_uint8.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None and x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False).clamp_(0.0, 1.0)
    return x.contiguous(memory_format=torch.channels_last)


def _pool_collate():
    """Ray Data numpy batch → tensors (images, ok) plus the ids as a list (strings stay on the host)."""
    import torch
    from ray.data.collate_fn import NumpyBatchCollateFn

    class PoolCollate(NumpyBatchCollateFn):
        def __call__(self, batch: dict) -> dict:
            return {"image": torch.from_numpy(batch["image"]), "ok": torch.from_numpy(batch["ok"].astype(bool)),
                    "id": [str(i) for i in batch["id"]]}
    return PoolCollate()


def _unlabeled_batches(shard, batch_size: int, seed: int, counters: dict):
    """Endless stream of unlabeled image batches from this worker's shard; corrupt rows dropped and counted.

    A batch whose rows are all unreadable is replaced by the last good one, so every worker takes one batch
    per step and the workers reach the shard's epoch barrier together (a worker that skipped ahead would
    wait there while the others wait for it in the gradient all-reduce)."""
    epoch, last = 0, None
    while True:
        seen = 0
        for b in shard.iter_torch_batches(batch_size=batch_size, local_shuffle_buffer_size=4 * batch_size,
                                          local_shuffle_seed=seed + epoch, drop_last=False,
                                          collate_fn=_pool_collate()):
            ok = b["ok"].bool()
            counters["skipped"] += int((~ok).sum())
            counters["seen"] += int(ok.sum())
            if "ids" in counters:
                counters["ids"].update(i for i, good in zip(b["id"], ok.tolist()) if good)
            if ok.any():
                seen += 1
                last = b["image"][ok]
            if last is not None:
                yield last
        if seen == 0:
            raise RuntimeError("the unlabeled pool yielded no readable image")
        epoch += 1


def _start_worker(job: TrainJob, mlflow_run_id: str):
    """This worker's rank, world size, device and precision; threads from the CPUs Ray gave it."""
    import ray.train
    import ray.train.torch
    import torch

    from jobs.resources import worker_threads
    from models.precision import resolve_precision

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = worker_threads(job.threads)
    torch.set_num_threads(threads)
    device = ray.train.torch.get_device()
    precision = resolve_precision(job.precision, device.type)
    if rank == 0:
        say(f"precision {precision.name} ({precision.reason}); {threads} torch thread(s) per worker; "
            f"{world} worker(s), global unlabeled batch {job.unlabeled_batch * world}, lr {job.lr}")
        set_tags(job.tracking_uri, mlflow_run_id, {"fskp.precision": precision.name,
                                                   "fskp.precision_reason": precision.reason,
                                                   "fskp.threads_per_worker": str(threads)})
    return rank, world, device, precision


def _labeled_shots(ds, shot_ids: list[str], device, size: int, with_depth: bool = False) -> dict:
    """The labeled shots on the device: "labeled" [L, 3, S, S], "keypoints" [L, K, 2] in [-1, 1], "visible",
    and with ``with_depth`` "depth" [L, K], the relative depths of their 3D keypoints (Table 2's baseline)."""
    import torch

    from models.geometry import depth_targets

    labeled = ds.arrays("train", ids=shot_ids)
    keypoints = torch.from_numpy(labeled["keypoints"] / ds.size * 2 - 1).float()
    shots = {"labeled": _to_batch(torch.from_numpy(labeled["images"]), device, size),
             "keypoints": keypoints.to(device), "visible": torch.from_numpy(labeled["visible"]).to(device)}
    if with_depth:
        shots["depth"] = depth_targets(keypoints, torch.from_numpy(labeled["keypoints_3d"])).to(device)
    return shots


def _restore(model, optimizer, device, rank: int) -> int:
    """Load the run's last checkpoint, if Ray Train has one (a retried worker group or a resumed run): its step."""
    import ray.train
    import torch

    ckpt = ray.train.get_checkpoint()
    if not ckpt:
        return 0
    # read in place through the checkpoint's filesystem (S3, GCS or local): as_directory() would download it to
    # the system temp folder, where a worker killed mid-read leaves the copy behind
    with ckpt.filesystem.open_input_file(f"{ckpt.path}/{CHECKPOINT_FILE}") as f:
        state = torch.load(io.BytesIO(f.read()), map_location=device, weights_only=True)
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    if rank == 0:
        say(f"resumed from checkpoint at step {state['step']}")
    return int(state["step"])


def _without_pretrained(job: TrainJob) -> TrainJob:
    """``job`` with its networks built from random weights (what a checkpoint's weights then replace)."""
    return replace(job, backbone_weights="none", perceptual_weights="none")


def _init_weights(model, checkpoint: str, device, rank: int) -> None:
    """Start from the weights of an earlier run's checkpoint (check_job has compared their shapes)."""
    from jobs.evaluation import read_checkpoint

    state, path = read_checkpoint(checkpoint, device)
    model.load_state_dict(state["state_dict"])
    if rank == 0:
        say(f"starting from the weights of {path} (its step {state.get('step', '?')})")


def init_problem(job: TrainJob, ds) -> str | None:
    """Why ``job.init_from`` cannot start this job on ``ds`` (missing, other keypoints, other network), or None."""
    import torch

    from jobs.evaluation import read_checkpoint

    try:
        state, path = read_checkpoint(job.init_from)
    except FileNotFoundError as e:
        return f"--init-from {job.init_from}: {e}"
    names = list(state.get("keypoint_names") or ds.card.keypoints)
    if names != list(ds.card.keypoints):
        return (f"--init-from {path}: trained on keypoints {', '.join(names)} (card {state.get('card_name')}), "
                f"the data has {', '.join(ds.card.keypoints)} (card {ds.card.name})")
    with torch.device("meta"):                                    # shapes only: nothing allocated or downloaded
        ours = build_model(ds.card, _without_pretrained(job))[0].state_dict()
    theirs = state["state_dict"]
    differ = sorted(k for k in ours.keys() | theirs.keys()
                    if k not in ours or k not in theirs or tuple(ours[k].shape) != tuple(theirs[k].shape))
    if not differ:
        return None
    k = differ[0]
    shape = lambda sd: tuple(sd[k].shape) if k in sd else "absent"    # noqa: E731
    trained = state.get("config", {})
    return (f"--init-from {path}: its network differs from this run's in {len(differ)} tensors (first: {k}, "
            f"{shape(theirs)} there, {shape(ours)} here); it was trained with --backbone {trained.get('backbone')} "
            f"--size {trained.get('image_size')} --perceptual-network {trained.get('perceptual_vit')}: use the same")


def _pool_stream(job: TrainJob, rank: int, counters: dict):
    """This worker's endless stream of unlabeled batches, watched for stalls; None if the variant uses none."""
    import ray.train

    from jobs.resources import starvation_report
    from jobs.watchdog import watched
    from models.variants import get_variant

    if not get_variant(job.variant).unlabeled:
        return None
    return watched(_unlabeled_batches(ray.train.get_dataset_shard("unlabeled"), job.unlabeled_batch,
                                      job.seed + rank, counters),
                   timeout_s=job.stall_timeout, what="unlabeled batch",
                   explain=lambda: f"Ray Data could not deliver the pool ({starvation_report()}). Lower "
                                   f"--cpus-per-worker or --max-concurrent (or leave them to the default), give Ray "
                                   f"more CPUs, or raise --stall-timeout if the pool's storage is just slow")


def train_func(config: dict) -> None:
    """Runs on every Ray Train worker: restore, loop ``train_step``, checkpoint, evaluate (rank 0)."""
    import ray.train
    import torch

    from jobs.evaluation import evaluate_model, learning_curve_point, write_eval_artifacts
    from models.metrics import COLLAPSED_SPREAD
    from models.train_step import make_optimizer, prepare_for_training, train_step
    from models.variants import get_variant
    from pipeline.prepared import PreparedDataset

    job = TrainJob(**{**config["job"], "coefficients": tuple(config["job"]["coefficients"])})
    rank, world, device, precision = _start_worker(job, config["mlflow_run_id"])
    ds = PreparedDataset(job.data)
    shots = _labeled_shots(ds, config["shot_ids"], device, job.size, get_variant(job.variant).depth_supervised)
    torch.manual_seed(job.seed)                                   # the same initial weights on every rank
    # --init-from: the checkpoint's weights replace every network's, so no pretrained ones are looked for
    net, loss_cfg, optim_cfg = build_model(ds.card, _without_pretrained(job) if job.init_from else job)
    if rank == 0:
        sources = net.weights_sources()
        set_tags(job.tracking_uri, config["mlflow_run_id"],
                 {k: f"init-from {job.init_from}" for k in sources} if job.init_from else sources)
    net = prepare_for_training(net, loss_cfg, optim_cfg, device)  # freezes what the variant never uses
    optimizer = make_optimizer(net, optim_cfg)
    start = resumed_from = _restore(net, optimizer, device, rank)
    if not start and job.init_from:                               # a retried or resumed run keeps its own weights
        _init_weights(net, job.init_from, device, rank)
    model = data_parallel(net, world, rank, job.seed)             # DDP; per-rank random draws from here on
    counters = {"skipped": 0, "seen": 0, **({"ids": set()} if job.record_rank_state else {})}
    pool = _pool_stream(job, rank, counters)
    n_lab = min(16, len(config["shot_ids"]))
    gen = torch.Generator().manual_seed(job.seed + 1000 * rank)

    def save_and_report(step: int, metrics: dict, final: bool = False):
        """Every worker calls this the same number of times (ray.train.report is a barrier)."""
        check_ranks_agree(net, step, world)
        # staged in Ray's temp folder of this node: a worker killed mid-save leaves nothing elsewhere on its disk
        with tempfile.TemporaryDirectory(prefix="fskp-checkpoint-", dir=ray.get_runtime_context().get_temp_dir()) as d:
            checkpoint = None
            if rank == 0:
                torch.save({**net.checkpoint(), "optimizer": optimizer.state_dict(), "step": step,
                            "job": asdict(job), "card_name": ds.card.name, "card_fingerprint": ds.card.fingerprint,
                            "num_keypoints": ds.card.num_keypoints, "keypoint_names": list(ds.card.keypoints),
                            "shot_ids": list(config["shot_ids"])}, Path(d) / CHECKPOINT_FILE)
                if final and "_eval" in metrics:
                    write_eval_artifacts(d, metrics.pop("_eval"))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)

    t0, last_log = time.time(), start
    for step in range(start, job.iterations):
        if job.fail_at_step is not None and step == job.fail_at_step and rank == 0 and not resumed_from:
            say(f"injected failure at step {step} (--fail-at-step)")
            # Ray Train's controller collects reports when it polls (every 2 s by default): a worker that dies
            # just after reporting can lose that checkpoint.  Wait out a few polls so that the test checks the
            # resume, not that race (a real crash then resumes from the checkpoint before)
            time.sleep(3 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)))
            os._exit(1)
        for group in optimizer.param_groups:
            group["lr"] = optim_cfg.lr_at(step) * group.get("lr_scale", 1.0)
        idx = torch.randperm(len(shots["labeled"]), generator=gen)[:n_lab]
        batch = {k: v[idx] for k, v in shots.items()}
        if pool is not None:
            batch["unlabeled"] = _to_batch(next(pool), device, job.size)
        try:
            losses = train_step(model, optimizer, batch, step, job.iterations, loss_cfg, precision.name)
        except torch.linalg.LinAlgError as e:       # SVD of the 3D loss meets NaN keypoints first
            raise FloatingPointError(f"non-finite loss at step {step + 1} ({e}); the last good checkpoint is kept") from e
        done = step + 1
        if device.type == "cpu" and not torch.isfinite(losses["loss"]):  # free on CPU; on GPU a sync: log steps only
            raise FloatingPointError(f"non-finite loss at step {done}; the last good checkpoint is kept")
        if done % job.log_every == 0 or done == job.iterations or done % job.checkpoint_every == 0:
            edge = {"train/edge_alpha": net.edges.alpha.item()} if get_variant(job.variant).recon else {}  # Eq. 12
            metrics = _log_losses(job, config["mlflow_run_id"], losses, done, (done - last_log) / max(time.time() - t0, 1e-9),
                                  counters, rank, extra=edge)
            t0, last_log = time.time(), done
            if done % job.checkpoint_every == 0 and done < job.iterations:
                if rank == 0 and job.evaluate_split:           # the learning curve: error vs iterations
                    curve = learning_curve_point(net, ds, job.evaluate_split, device=device)
                    log_to_mlflow(job.tracking_uri, config["mlflow_run_id"], curve, done)
                save_and_report(done, metrics)
            elif done < job.iterations:
                ray.train.report(metrics)

    # ---- end of run: skipped-count across workers, evaluation on the test split (rank 0) ----
    if job.record_rank_state:
        _record_rank_state(job, config["run_folder"], rank, counters, net)
    final = {"step": job.iterations, **_pool_counts(counters, device, world), "resumed_from_step": resumed_from}
    if rank == 0 and job.evaluate_split:
        result = evaluate_model(net, ds, split=job.evaluate_split, device=device)
        spread = result["metrics"][f"{job.evaluate_split}/spread_ratio"]
        if spread < COLLAPSED_SPREAD:
            say(f"warning: the predictions on {job.evaluate_split} collapsed toward one point (their spread is "
                f"{spread:.2f} of the labels'): the detector fits its labeled images but not others")
        final.update(result["metrics"])
        log_to_mlflow(job.tracking_uri, config["mlflow_run_id"], result["curve"], job.iterations)
        final["_eval"] = result
    save_and_report(job.iterations, final, final=True)


def _log_losses(job: TrainJob, mlflow_run_id: str, losses: dict, done: int, rate: float, counters: dict,
                rank: int, extra: dict | None = None) -> dict:
    """The losses as floats (a host sync: log steps only), checked finite; rank 0 prints and logs them with
    ``extra`` metrics (e.g. the edge map's weight)."""
    from jobs.watchdog import time_left

    values = {k: float(v) for k, v in losses.items()}
    if not all(math.isfinite(v) for v in values.values()):
        bad = ", ".join(k for k, v in values.items() if not math.isfinite(v))
        raise FloatingPointError(f"non-finite loss ({bad}) at step {done}; the last good checkpoint is kept")
    metrics = {**{f"train/{k}": v for k, v in values.items()}, **(extra or {}), "step": done, "it_per_s": rate,
               "pool_skipped": counters["skipped"]}
    if rank == 0:
        terms = {k: v for k, v in values.items() if v != 0.0 or k in ("loss", "few_shot")}   # the variant's terms
        say(f"step {done}/{job.iterations}  " + "  ".join(f"{k} {v:.4f}" for k, v in terms.items())
            + f"  {rate:.2f} it/s  {time_left(job.iterations - done, rate, of='training')}".rstrip())
        log_to_mlflow(job.tracking_uri, mlflow_run_id, metrics, done)
    return metrics


def _pool_counts(counters: dict, device, world: int) -> dict:
    """Unreadable and readable pool rows over all workers."""
    import torch

    counts = torch.tensor([counters["skipped"], counters["seen"]], dtype=torch.long)
    if world > 1:
        import torch.distributed as dist

        counts = counts.to(device)
        dist.all_reduce(counts)
    return {"pool_skipped": int(counts[0]), "pool_seen": int(counts[1])}


def _record_rank_state(job: TrainJob, run_folder: str, rank: int, counters: dict, net) -> None:
    """Testing: the pool ids this worker saw, its weights' digest and a draw of its random stream, under the
    run's storage folder."""
    from pipeline.storage import join, write_text

    import torch

    write_text(join(job.storage_path, run_folder, f"rank{rank}.json"),
               json.dumps({"pool_ids": sorted(counters["ids"]), "weights_sha256": weights_digest(net),
                           "random_draw": torch.rand(4).tolist()}))


# ---- driver side -------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_id: str
    metrics: dict
    checkpoint_path: str | None
    shot_ids: list[str] = field(default_factory=list)
    error: str | None = None


def _ray_init(job: TrainJob):
    from jobs.raystart import start_ray

    start_ray(log_to_driver=True, configure_logging=True, logging_level="WARNING")
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # The pool's blocks reach the workers in a fixed order, so a seed gives the same run (paper: seeds 0).
    # Without it, the order in which read tasks finish changed the losses between identical runs.
    ctx.execution_options.preserve_order = True


def run_training(job: TrainJob, *, shot_ids: list[str] | None = None, parent_run_id: str | None = None,
                 callbacks: list | None = None) -> TrainResult:
    """Select shots, train on Ray, evaluate, and record everything in one MLflow run."""
    import mlflow
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from jobs.grid import SETTINGS_TAG, job_settings, settings_digest
    from jobs.tracking import code_version, flat_params, resolve_tracking_uri
    from models.variants import get_variant
    from pipeline.prepared import PreparedDataset
    from pipeline.storage import resolve_location

    ds = PreparedDataset(job.data)
    check_job(job, ds)
    job = replace(job, data=ds.root, tracking_uri=resolve_tracking_uri(job.tracking_uri),
                  storage_path=resolve_location(job.storage_path or "runs"))
    name = job.run_name or job.default_name(ds.card.name)
    selection_info = {}
    if shot_ids is None:
        from pipeline.select import select_shots

        sel = select_shots(ds, job.shots, method=job.selection, seed=job.seed, backbone=job.selection_backbone,
                           weights=job.selection_weights)
        shot_ids, selection_info = list(sel.ids), asdict(sel)
    mlflow.set_tracking_uri(job.tracking_uri)
    mlflow.set_experiment(job.experiment)
    tags = {"dataset": ds.card.name, "variant": job.variant, "shots": job.shots, "selection": job.selection,
            "seed": str(job.seed)}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tags[SETTINGS_TAG] = settings_digest(job_settings(job), ds.fingerprint)
    with mlflow.start_run(run_name=name, tags=tags) as run:
        mlflow.log_params({**flat_params("", {k: v for k, v in asdict(job).items() if k not in ("tracking_uri",)}),
                           "dataset": ds.card.name, "card_fingerprint": ds.card.fingerprint,
                           "data_fingerprint": ds.fingerprint, "n_shots": len(shot_ids),
                           "global_unlabeled_batch": job.unlabeled_batch * job.workers,
                           "variant_definition": get_variant(job.variant).definition,
                           "code_version": code_version()})
        mlflow.log_dict({"ids": shot_ids, **{k: v for k, v in selection_info.items() if k != "ids"}}, "shots.json")
        _ray_init(job)
        if job.cpus_per_worker is None:                            # a sweep has sized it already
            from jobs.resources import cluster_nodes, plan_training

            plan = plan_training(cluster_nodes(), workers=job.workers, gpu=job.gpu, gpu_fraction=job.gpu_fraction,
                                 concurrent=1)
            job = replace(job, cpus_per_worker=plan.cpus_per_worker)
            print(f"resources: {plan.note}", flush=True)
            mlflow.log_param("cpus_per_worker_resolved", plan.cpus_per_worker)
        datasets = {"unlabeled": unlabeled_pool(job)}
        resources = {"CPU": job.cpus_per_worker}
        if job.gpu:
            resources["GPU"] = job.gpu_fraction
        train_name = train_run_name(job, name, ds.fingerprint, shot_ids) if job.resume else f"{name}-{run.info.run_id[:8]}"
        mlflow.set_tags({"fskp.train_run": train_name, "fskp.storage_path": job.storage_path})
        trainer = TorchTrainer(
            train_func,
            train_loop_config={"job": asdict(job), "shot_ids": shot_ids, "mlflow_run_id": run.info.run_id,
                               "run_folder": train_name},
            scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=job.gpu, resources_per_worker=resources),
            torch_config=TorchConfig(timeout_s=int(job.stall_timeout)),      # waits on other workers time out too
            datasets=datasets, dataset_config=DataConfig(datasets_to_split=["unlabeled"]),
            run_config=RunConfig(name=train_name, storage_path=job.storage_path,
                                 failure_config=FailureConfig(max_failures=job.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 callbacks=callbacks or []))
        try:
            result = trainer.fit()
        except Exception as e:                                     # surfaced as a failed MLflow run
            result, err = None, e
        else:
            err = result.error
        ckpt_path = checkpoint_location(result.checkpoint) if result is not None and result.checkpoint else None
        if ckpt_path:
            mlflow.set_tag("checkpoint_path", ckpt_path)
        if err is not None:
            message = _root_message(err)
            mlflow.set_tag("error", message[:5000])
            mlflow.end_run(status="FAILED")
            return TrainResult(run.info.run_id, {}, ckpt_path, shot_ids, error=message)
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if k != "step"}, step=job.iterations)
        with result.checkpoint.as_directory() as d:
            for f in sorted(Path(d).iterdir()):
                if f.name != CHECKPOINT_FILE:
                    mlflow.log_artifact(str(f), artifact_path="evaluation")
        return TrainResult(run.info.run_id, metrics, ckpt_path, shot_ids)


#: TrainJob fields that never change what a run computes: left out of the stable Ray Train run name
NOT_IN_RUN_NAME = ("experiment", "tracking_uri", "storage_path", "run_name", "max_failures", "fail_at_step",
                   "threads", "stall_timeout", "log_every", "record_rank_state", "cpus_per_worker", "resume",
                   "evaluate_split")


def train_run_name(job: TrainJob, name: str, data_fingerprint: str, shot_ids: list[str]) -> str:
    """A Ray Train run name fixed by the cell, its settings, its shots and its data: the same command again finds
    the interrupted run's checkpoints under the storage path and continues from the last one."""
    import hashlib

    from models.variants import get_variant

    settings = {k: v for k, v in asdict(job).items() if k not in NOT_IN_RUN_NAME}
    text = json.dumps({"job": settings, "data": data_fingerprint, "shots": sorted(shot_ids),
                       "variant_definition": get_variant(job.variant).definition}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def checkpoint_location(checkpoint) -> str:
    """A Ray Train checkpoint's location as a URI for object stores (``s3://bucket/...``), else its path."""
    kind = getattr(checkpoint.filesystem, "type_name", "local")
    return checkpoint.path if kind == "local" else f"{'gs' if kind == 'gcs' else kind}://{checkpoint.path}"


def check_job(job: TrainJob, ds) -> None:
    """Refuse, before Ray starts, a job that cannot train on prepared dataset ``ds`` (one message per problem)."""
    from models.config import LossConfig, ModelConfig
    from models.precision import PRECISIONS
    from models.variants import get_variant
    from pipeline.pool import remote_pool_problem
    from pipeline.storage import exists as storage_exists

    problems = []
    try:
        ModelConfig.from_card(ds.card, backbone=job.backbone, image_size=job.size)
    except ValueError as e:
        problems.append(f"--size {job.size}: {e}")
    try:
        ModelConfig.from_card(ds.card, batch_norm=job.batch_norm)
    except ValueError as e:
        problems.append(str(e))
    from models.pretrained import auto_gets_random, check_weights_choice

    if job.batch_norm != "batch":
        random_backbone = ("--backbone-weights none" if job.backbone_weights == "none" else None)
        if job.backbone_weights == "auto" and (why := auto_gets_random(job.backbone)):
            random_backbone = f"--backbone-weights auto finds none for {job.backbone} ({why})"
        if random_backbone:
            problems.append(f"--batch-norm {job.batch_norm} keeps the backbone's BatchNorm at its pretrained "
                            f"statistics, and {random_backbone}: random weights have none (mean 0, variance 1). Use "
                            f"pretrained weights (offline: --backbone efficientnet_lite0, whose ImageNet weights come "
                            f"with fskp) or --batch-norm batch")
    try:
        LossConfig(variant=job.variant)
        if get_variant(job.variant).recon and not ds.card.links:
            problems.append(f"variant {job.variant!r} draws edge maps from the card's links, and card "
                            f"{ds.card.name!r} has none: give links (--links) or use --variant no-recon/supervised")
        if get_variant(job.variant).recon and (job.mask_patch < 1 or job.size % job.mask_patch):
            problems.append(f"mask_patch {job.mask_patch}: Eq. 9 masks square patches, so it must divide --size "
                            f"{job.size}")
        missing = get_variant(job.variant).depth_supervised and _row_without_3d_labels(ds)
        if missing:
            problems.append(f"variant {job.variant!r} learns depth from 3D keypoints, and the train split has "
                            f"none (keypoints_3d empty in row {missing}): use --variant xiao, or prepare the data "
                            f"with 3D keypoints (the synthetic benchmark has them)")
    except ValueError as e:
        problems.append(str(e))
    for option, network, choice in (("--backbone-weights", job.backbone, job.backbone_weights),
                                    ("--perceptual-weights", job.perceptual_vit, job.perceptual_weights),
                                    ("--selection-weights", job.selection_backbone, job.selection_weights)):
        problem = check_weights_choice(network, choice)
        if problem:
            problems.append(f"{option} {choice}: {problem}")
    if job.precision not in PRECISIONS:
        problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, got {job.precision!r}")
    if job.iterations < 1 or job.unlabeled_batch < 1:
        problems.append(f"--iterations ({job.iterations}) and the unlabeled batch ({job.unlabeled_batch}) must be positive")
    from jobs.resources import shared_gpu_problem

    shared_gpu = shared_gpu_problem(job.workers, job.gpu, job.gpu_fraction)
    if shared_gpu:
        problems.append(shared_gpu)
    if job.cpus_per_worker is not None and job.cpus_per_worker <= 0:
        problems.append(f"--cpus-per-worker must be positive, got {job.cpus_per_worker}")
    n_train = ds.count("train")
    shots = job.shots.strip()
    if not shots.endswith("%") and shots.isdigit() and int(shots) > n_train:
        problems.append(f"--shots {shots}: the train split has only {n_train} labeled rows")
    pool = [job.pool] if isinstance(job.pool, str) else list(job.pool or ())
    problems += [f"--pool {source}: not found" for source in pool if not storage_exists(source)]
    remote = remote_pool_problem(pool)
    if remote:
        problems.append(f"--pool {remote}")
    if job.init_from:
        problems += [p for p in [init_problem(job, ds)] if p]
    if problems:
        raise ValueError(f"{ds.root}: " + "\n  ".join(problems) if len(problems) == 1 else
                         f"{ds.root}: {len(problems)} problems:\n  " + "\n  ".join(problems))


def _row_without_3d_labels(ds) -> str | None:
    """The id of the first train row of prepared dataset ``ds`` without 3D keypoints ("(empty split)" when it
    has no rows), or None when every row has them."""
    table = ds.table("train", columns=["id", "keypoints_3d"])
    if not len(table):
        return "(empty split)"
    nulls = table.column("keypoints_3d").is_null().to_pylist()
    return str(table.column("id")[nulls.index(True)]) if True in nulls else None


def unlabeled_pool(job: TrainJob):
    """The job's unlabeled pool: rows of the prepared dataset's pool splits, plus raw image folders and
    videos (``job.pool``, cropped with ``job.pool_crop``), as one Ray Data stream."""
    from pipeline.pool import pool_dataset

    splits = job.pool_splits if job.pool_splits is not None else (() if job.pool else ("train",))
    parts = [pool_dataset(job.data, job.size, split=tuple(splits))] if splits else []
    if job.pool:
        sources = [job.pool] if isinstance(job.pool, str) else list(job.pool)
        parts.append(pool_dataset(sources, job.size, crop_box=job.pool_crop))
    if not parts:
        raise ValueError(f"{job.data}: the job has no unlabeled pool (no pool splits and no --pool)")
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def _root_message(err: BaseException) -> str:
    """The innermost error message of a (possibly wrapped) Ray Train failure."""
    text = str(err)
    for marker in ("FloatingPointError:", "DataError:", "ValueError:", "RuntimeError:"):
        if marker in text:
            return marker.rstrip(":") + ":" + text.split(marker, 1)[1].split("\n")[0]
    return text.strip().splitlines()[-1] if text.strip() else type(err).__name__
