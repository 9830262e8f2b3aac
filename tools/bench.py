"""Times one training step of train.py against a textbook loop, in one process.

(a) textbook: a uint8 HWC array, per-image Python crop / flip / normalise, a stack, a copy to
    the device, an NCHW model and torch.optim.SGD (PyTorch's defaults);
(b) this project: cifar.Loader (the split on the device, batched crop and flip, channels_last)
    and train.train_step (the hand-written multi-tensor SGD update).
Rounds alternate (a) and (b) so that both see the same machine load; each prints images/s and
the median ratio, the data pipeline's share of a step of (b), and the peak memory.

    python -m tools.bench --device cpu --width 16      # from the repository's root
"""
import argparse
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import cifar
from resnet18 import ResNet18
import train
from train import compiled, deterministic_cuda, train_step


def textbook_batch(images_hwc, labels, batch, rng, device):
    """Per-image transforms, as a torchvision-style Dataset + DataLoader does them."""
    xs, ys = [], []
    for i in rng.integers(0, len(labels), batch):
        img = np.pad(images_hwc[i], ((4, 4), (4, 4), (0, 0)))  # (40, 40, 3)
        dy, dx = rng.integers(0, 9, 2)
        img = img[dy:dy + 32, dx:dx + 32]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        x = torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255)  # (3, 32, 32)
        mean, std = torch.tensor(cifar.MEAN).view(3, 1, 1), torch.tensor(cifar.STD).view(3, 1, 1)
        xs.append((x - mean) / std)
        ys.append(int(labels[i]))
    return torch.stack(xs).to(device), torch.tensor(ys).to(device)


def timed(fn, steps, device):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", type=train.parse_device, default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: the GPU if there is one)")
    p.add_argument("--width", type=int, default=64, help="model width (default 64, the study)")
    p.add_argument("--batch", type=int, default=32, help="images per step (default 32, the study)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--steps", type=int, default=20, help="steps per round and path (default 20)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in the project's step")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the project's model as train.py does (on CUDA: mode "
                        "reduce-overhead, CUDA graphs)")
    args = p.parse_args(argv)
    device = args.device
    deterministic_cuda(device)  # as train.py runs: on CUDA, deterministic cuDNN and no TF32
    g = torch.Generator().manual_seed(0)  # the images' content does not matter
    images = torch.randint(0, 256, (10000, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (10000,), generator=g)

    # (a) the textbook loop
    torch.manual_seed(0)
    base_model = ResNet18(width=args.width).to(device)
    opt = torch.optim.SGD(base_model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    images_hwc, rng = images.permute(0, 2, 3, 1).numpy().copy(), np.random.default_rng(0)

    def base_step():
        x, y = textbook_batch(images_hwc, labels.numpy(), args.batch, rng, device)
        loss = F.cross_entropy(base_model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    # (b) this project's step
    torch.manual_seed(0)
    model = ResNet18(width=args.width).to(device, memory_format=torch.channels_last)
    step_model = compiled(model, device) if args.compile else model
    params = list(model.parameters())
    bufs = [torch.zeros_like(q) for q in params]
    loader = cifar.Loader(images, labels, args.batch, device)

    def project_step():
        x, y = next(loader)
        train_step(step_model, params, bufs, x, y, 0.01, 0.9, 2e-4, args.amp)
    compare(base_step, project_step, lambda: next(loader), args, device)


def compare(base_step, project_step, data_step, args, device):
    """Warm both paths up, then alternate rounds of each; print images/s, their ratio, the data
    pipeline's share of a project step and the peak memory."""
    peak = {}
    for name, fn in (("textbook", base_step), ("project", project_step)):  # warm-up; peak memory
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timed(fn, 5, device)
        if device.type == "cuda":
            peak[name] = torch.cuda.max_memory_allocated(device) / 2**20
    base_t, proj_t, data_t = [], [], []
    for r in range(args.rounds):
        base_t.append(timed(base_step, args.steps, device) / args.steps)
        proj_t.append(timed(project_step, args.steps, device) / args.steps)
        data_t.append(timed(data_step, args.steps, device) / args.steps)
        print(f"round {r + 1}: textbook {args.batch / base_t[-1]:7.0f} img/s | project "
              f"{args.batch / proj_t[-1]:7.0f} img/s | ratio {base_t[-1] / proj_t[-1]:.2f}",
              flush=True)
    b, q, d = (statistics.median(t) for t in (base_t, proj_t, data_t))
    print(f"\ndevice {device}, width {args.width}, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, amp {args.amp}, compile {args.compile}")
    print(f"textbook: {args.batch / b:.0f} img/s ({1000 * b:.1f} ms/step)")
    print(f"project:  {args.batch / q:.0f} img/s ({1000 * q:.1f} ms/step)")
    print(f"speed-up: {b / q:.2f}x (median of {args.rounds} rounds of {args.steps} steps)")
    print(f"data pipeline: {1000 * d:.2f} ms per batch, {100 * d / q:.1f} % of a project step")
    if device.type == "cuda":
        print(f"peak GPU memory: textbook {peak['textbook']:.0f} MiB, "
              f"project {peak['project']:.0f} MiB")
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak memory: {rss:.0f} MiB resident (both paths, one process)")


if __name__ == "__main__":
    sys.exit(main())
