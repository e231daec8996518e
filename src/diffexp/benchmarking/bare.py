"""The bare-PyTorch reference a benchmark compares diffexp with: the same work, no framework.

:func:`train_bare` is DiffusionModule's training step written as a plain loop over the same
network, data, loss, optimizer, LR schedule, gradient clipping, EMA update and precision;
:func:`time_forward` is the ideal a sampler can reach: forward passes of the network and nothing
else. The settings are read from the same config the module is built from, by the rules the
module applies (:func:`optimizer_kwargs`, :func:`lr_scheduler`, :func:`autocast_for`,
:func:`layout_of`); the benchmark checks the optimizers and layouts of both paths equal at run
time, so a drift shows up there. Like the module, the bare loop runs the network in channels_last
when ``model.channels_last`` is set (weights and input), through ``torch.compile`` when
``model.compile`` is, and copies each batch's indices to the device without blocking (as
Lightning moves a batch) before gathering the images there.
"""

from __future__ import annotations

import torch

from diffexp.benchmarking.timing import Clock
from diffexp.precision import autocast as precision_autocast


def autocast_for(c: dict, device: torch.device):
    """The module's autocast rule (bf16 with a bf16 precision, on a GPU or the CPU; else off)."""
    return precision_autocast(device, c["trainer"]["precision"])


def optimizer_kwargs(c: dict) -> tuple[type, dict]:
    """Exactly what DiffusionModule.configure_optimizers builds (checked against it at run time)."""
    o = c["optim"]
    kw = dict(lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])
    if torch.cuda.is_available():
        kw["fused"] = True
    else:
        kw["foreach"] = True
    return (torch.optim.AdamW if o["name"] == "adamw" else torch.optim.Adam), kw


def lr_scheduler(c: dict, opt, total: int):
    """The module's LR schedule over ``total`` steps (None for a constant rate)."""
    o = c["optim"]
    if o["lr_schedule"] == "onecycle":
        pct = max(o["pct_start"], 2.0 / total)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o["lr"], total_steps=total,
                                                   pct_start=pct)
    if o["lr_schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return None


def layout_of(c: dict) -> dict:
    """The network's memory format and compile mode, as the module takes them from ``model``."""
    m = c["model"]
    return {"memory_format": "channels_last" if m.get("channels_last") else "contiguous",
            "compile": bool(m.get("compile"))}


def describe_optimizer(opt) -> dict:
    """The optimizer's class and hyper-parameters, in a form two paths' can be compared (and
    written to JSON) by: keys sorted, tuples as lists."""
    defaults = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(opt.defaults.items())}
    return {"optimizer": type(opt).__name__, "optimizer_defaults": defaults}


def train_bare(c: dict, data, device: torch.device, warmup: int, n: int, seed: int,
               profiler=None) -> dict:
    """The same training work as a ``Trainer.fit`` of DiffusionModule, in a plain PyTorch loop:
    images/s (wall and CPU) over the ``n`` steps after ``warmup``, and the optimizer used.
    ``profiler`` (a cProfile.Profile) is enabled for the timed steps only."""
    from diffexp.build import build_network, build_objective, build_schedule
    from diffexp.data import encode

    torch.manual_seed(seed)
    schedule = build_schedule(c["schedule"])
    objective = build_objective(c["objective"], schedule)
    net = build_network(c["model"], conditioned=objective.conditioned).to(device)
    layout = layout_of(c)
    channels_last = layout["memory_format"] == "channels_last"
    if channels_last:
        net.to(memory_format=torch.channels_last)
    forward = torch.compile(net) if layout["compile"] else net
    shadow = [p.detach().clone() for p in net.parameters()]  # in the weights' memory format
    params = list(net.parameters())
    cls, kw = optimizer_kwargs(c)
    opt = cls(params, **kw)
    total = warmup + n
    sched = lr_scheduler(c, opt, total)
    t = c["train"]
    bs, clip, decay = t["batch_size"], t["grad_clip"], t["ema_decay"]
    images = data.images.to(device)
    pad, scale = data.pad, data.scale
    # the training images in the order of the module's first epoch (shuffled with seed + epoch 0)
    perm = data.train_index[torch.randperm(len(data.train_index),
                                           generator=torch.Generator().manual_seed(c["seed"]))]
    amp = autocast_for(c, device)
    net.train()

    def step(b: int, ema_step: int) -> None:
        idx = perm[b * bs:(b + 1) * bs]
        with amp:
            x0 = encode(images[idx.to(device, non_blocking=True)], pad, scale)
            sigma = schedule.sample_training_sigma(bs, device=device)
            noise = torch.randn(x0.shape, device=device)
            x = x0 + sigma.view(-1, 1, 1, 1) * noise
            inp, cond = objective.net_input(x, sigma)
            if channels_last:
                inp = inp.contiguous(memory_format=torch.channels_last)
            out = forward(inp, cond).float()
            target = objective.target(x0, noise, sigma)
            per_image = (out - target).pow(2).mean(dim=(1, 2, 3))
            loss = (objective.loss_weight(sigma) * per_image).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if sched is not None:
            sched.step()
        with torch.no_grad():  # the module's EMA: decay warmed up over the first steps
            d = min(decay, (1 + ema_step) / (10 + ema_step))
            torch._foreach_lerp_(shadow, [p.detach() for p in params], 1.0 - d)

    for b in range(warmup):
        step(b, b)
    clock = Clock(device)
    if profiler is not None:
        profiler.enable()
    for b in range(warmup, total):
        step(b, b)
    wall, cpu = clock.elapsed()
    if profiler is not None:
        profiler.disable()
    return {"images_per_s": n * bs / wall, "cpu_images_per_s": n * bs / cpu,
            **describe_optimizer(opt), "layout": layout}


def time_forward(module, count: int, bs: int, device, seed: int) -> dict:
    """``count`` bare forward passes of the module's EMA network on a batch of ``bs``, under the
    module's autocast: the NFE/s a sampler would reach if sampling cost nothing but the network."""
    net = module.ema.shadow
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((bs, *module.image_shape), generator=g).to(device)
    cond = torch.rand(bs, generator=g).to(device) if module.objective.conditioned else None
    clock = Clock(device)
    with torch.no_grad(), module._autocast():
        for _ in range(count):
            net(x, cond)
    wall, cpu = clock.elapsed()
    return {"nfe_per_s": count * bs / wall, "cpu_nfe_per_s": count * bs / cpu}
