"""One training epoch (gradient accumulation, no per-step host sync, stop and save on request), evaluation
and throughput measurement."""
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.utils import ModelEmaV3, NativeScaler, accuracy, dispatch_clip_grad

from distributed_setup import collective_device, is_dist_avail_and_initialized
from meters import MetricLogger, SmoothedValue
from run_log import logger

if TYPE_CHECKING:
    from run_state import TrainingRun


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """Mixed precision in `amp_dtype` on the device (CUDA, or CPU's bfloat16/float16 autocast); float32 when
    it is None."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


class StepMixup(Mixup):
    """timm's Mixup/CutMix with its random parameters (lambda, mixup or cutmix) drawn once per optimizer step
    (`next_step`): with gradient accumulation every micro-batch of a step is mixed alike, as the one large
    batch would be; with one micro-batch per step it is timm's Mixup draw for draw."""

    def next_step(self) -> None:
        self._step_params = Mixup._params_per_batch(self)

    def _params_per_batch(self) -> Tuple[float, bool]:
        return self._step_params


def meter_states(metric_logger: MetricLogger) -> Dict[str, tuple]:
    """The epoch's meters so far (window, total, count), for a mid-epoch checkpoint."""
    return {name: (list(meter.deque), meter.total, meter.count) for name, meter in metric_logger.meters.items()}


def load_meter_states(metric_logger: MetricLogger, states: Dict[str, tuple]) -> None:
    for name, (window, total, count) in states.items():
        meter = metric_logger.meters[name]
        meter.deque.extend(window)
        meter.total, meter.count = total, count


class OptimizerSteps:
    """The loader's micro-batches grouped into optimizer steps of `accum_steps` (the epoch's last step takes
    what is left, as in timm); iterating yields (step index in the epoch, number of micro-batches, iterator
    over them). `start_step` is where a resumed epoch begins (the loader then starts there too)."""

    def __init__(self, loader: Iterable, accum_steps: int, start_step: int = 0):
        self.loader = loader
        self.accum_steps = accum_steps
        self.start_step = start_step
        self.micro_batches = start_step * accum_steps + len(loader)  # in the whole epoch
        self.steps = -(-self.micro_batches // accum_steps)

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[Tuple[int, int, Iterator]]:
        batches = iter(self.loader)
        for step in range(self.start_step, self.steps):
            count = min(self.accum_steps, self.micro_batches - step * self.accum_steps)
            yield step, count, (next(batches) for _ in range(count))


class PendingLosses:
    """Step losses kept on the device and read in one transfer at the logging interval and before any
    checkpoint: no host sync per step, and a NaN/inf loss is still found before anything is written (the
    ranks agree on it, so all of them stop)."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        self.losses: List[torch.Tensor] = []
        self.steps: List[int] = []

    def append(self, step: int, loss: torch.Tensor) -> None:
        self.steps.append(step)
        self.losses.append(loss.detach())

    def flush(self, metric_logger: MetricLogger, lr: float) -> None:
        """Move the pending losses into the meters; NonFiniteLossError at the first non-finite one (any rank)."""
        values = torch.stack(self.losses).float().tolist() if self.losses else []
        steps, self.losses, self.steps = self.steps, [], []
        bad = next(((step, value) for step, value in zip(steps, values) if not math.isfinite(value)), None)
        if is_dist_avail_and_initialized():
            flag = torch.tensor([bad is not None], dtype=torch.int32, device=collective_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and bad is None:
                raise NonFiniteLossError(f'the loss became NaN or infinite on another rank at epoch {self.epoch} '
                                         f'(see its error): stopping. No checkpoint was written after it.')
        if bad is not None:
            raise NonFiniteLossError(
                f'loss is {bad[1]} at epoch {self.epoch}, step {bad[0]}: stopping. No checkpoint was written '
                f'after it (the last one is untouched); lower --lr, keep --clip-grad on, or use --amp-dtype '
                f'bfloat16.')
        for value in values:
            metric_logger.update(loss=value, lr=lr)


@dataclass
class TrainStep:
    """How one optimizer step trains: `accum_steps` micro-batches, the loss of each divided by the step's count,
    under mixed precision (`amp_dtype`, a `loss_scaler` for float16), DDP (`ddp_model`) synchronising gradients
    only in the last micro-batch's forward and backward (`no_sync`), mixup drawn once per step, gradients
    clipped to `max_norm`, the EMA updated once per step."""
    criterion: Callable
    optimizer: torch.optim.Optimizer
    device: torch.device
    accum_steps: int = 1
    loss_scaler: Optional[NativeScaler] = None
    amp_dtype: Optional[torch.dtype] = None
    max_norm: Optional[float] = None
    model_ema: Optional[ModelEmaV3] = None
    mixup_fn: Optional[StepMixup] = None
    channels_last: bool = False
    ddp_model: Optional[torch.nn.parallel.DistributedDataParallel] = None

    def __call__(self, model: torch.nn.Module, micro_batches: Iterator, count: int) -> torch.Tensor:
        """One optimizer step over `count` micro-batches; returns the step's mean loss (on the device)."""
        self.optimizer.zero_grad()
        parameters = [p for p in model.parameters() if p.requires_grad]
        step_loss = 0.0
        for micro, (samples, targets) in enumerate(micro_batches):
            samples = samples.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if self.channels_last:
                samples = samples.contiguous(memory_format=torch.channels_last)
            if self.mixup_fn is not None:
                if micro == 0:
                    self.mixup_fn.next_step()
                samples, targets = self.mixup_fn(samples, targets)
            last = micro == count - 1
            # the forward too: DDP prepares its gradient all-reduce in the forward
            sync = self.ddp_model.no_sync() if self.ddp_model is not None and not last else nullcontext()
            with sync:
                with autocast(self.device, self.amp_dtype):
                    loss = self.criterion(model(samples), targets)
                step_loss = step_loss + loss.detach()
                loss = loss / count
                if self.loss_scaler is not None:
                    self.loss_scaler(loss, self.optimizer, clip_grad=self.max_norm, parameters=parameters,
                                     need_update=last)
                else:
                    loss.backward()
            if last and self.loss_scaler is None:
                if self.max_norm:
                    dispatch_clip_grad(parameters, self.max_norm)
                self.optimizer.step()
        if self.model_ema is not None:
            self.model_ema.update(model)
        return step_loss / count


def train_one_epoch(
        model: torch.nn.Module,
        train_step: TrainStep,
        data_loader: Iterable,
        epoch: int,
        run: Optional['TrainingRun'] = None,
        start_step: int = 0,
        meters: Optional[Dict[str, tuple]] = None,
        checkpoint_interval: int = 0,
        print_freq: int = 10,
) -> Tuple[Dict[str, float], bool]:
    """Train one epoch (from optimizer step `start_step` on, with the epoch's `meters` so far when resuming).

    After step n (counted in the epoch) the `run` writes its position every `checkpoint_interval` steps and
    when the ranks agree to stop; the losses are checked for NaN/inf before each save. A stop agreed on the
    epoch's last step ends the epoch as usual (its evaluation and checkpoint follow; the caller stops then).
    Returns (the epoch's averaged stats, whether it stopped early).
    """
    model.train()
    metric_logger = MetricLogger()
    metric_logger.add_meter('lr', SmoothedValue(window_size=1, fmt='{value:.6f}'))
    if meters:
        load_meter_states(metric_logger, meters)
    steps = OptimizerSteps(data_loader, train_step.accum_steps, start_step)
    pending = PendingLosses(epoch)
    lr = max(group['lr'] for group in train_step.optimizer.param_groups)
    micro_batches_done = 0
    header = f'Epoch: [{epoch}]'
    for index, (step, count, micro_batches) in enumerate(metric_logger.log_every(steps, print_freq, header)):
        pending.append(step, train_step(model, micro_batches, count))
        micro_batches_done += count
        done = step + 1
        last = done == steps.steps
        stopping = run is not None and run.stop_agreed() and not last
        saving = run is not None and (stopping or (checkpoint_interval and done % checkpoint_interval == 0
                                                   and not last))
        if saving or index % print_freq == 0 or last:
            pending.flush(metric_logger, lr)  # before log_every prints, and before anything is written
        if saving:
            run.save_position(epoch, done, micro_batches_done, meter_states(metric_logger))
        if stopping:
            return {name: meter.global_avg for name, meter in metric_logger.meters.items()}, True
    metric_logger.synchronize_between_processes()
    if len(steps):  # a resumed epoch may have no whole global batch left in another layout
        logger.info(f'Averaged stats: {metric_logger}')
    return {name: meter.global_avg for name, meter in metric_logger.meters.items()}, False


@torch.no_grad()
def evaluate(
        data_loader: Iterable,
        model: torch.nn.Module,
        device: torch.device,
        amp_dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
) -> Dict[str, float]:
    criterion = torch.nn.CrossEntropyLoss()
    metric_logger = MetricLogger()
    for name in ('loss', 'acc1', 'acc5'):  # a rank without validation samples (fewer shards than ranks) adds 0
        metric_logger.add_meter(name, SmoothedValue())
    model.eval()
    for images, targets in metric_logger.log_every(data_loader, 10, 'Test:'):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            output = model(images)
            loss = criterion(output, targets)
        acc1, acc5 = accuracy(output, targets, topk=(1, 5))  # top-5 is top-k with fewer than 5 classes
        batch_size = images.shape[0]
        metric_logger.meters['loss'].update(loss.item(), n=batch_size)
        metric_logger.meters['acc1'].update(acc1.item(), n=batch_size)
        metric_logger.meters['acc5'].update(acc5.item(), n=batch_size)
    metric_logger.synchronize_between_processes()
    logger.info(f'* Acc@1 {metric_logger.acc1.global_avg:.3f} Acc@5 {metric_logger.acc5.global_avg:.3f} '
                f'loss {metric_logger.loss.global_avg:.3f}')
    return {name: meter.global_avg for name, meter in metric_logger.meters.items()}


@torch.no_grad()
def throughput(
        data_loader: Iterable,
        model: torch.nn.Module,
        device: torch.device,
        amp_dtype: Optional[torch.dtype] = None,
        warmup: int = 50,
        iterations: int = 30,
) -> float:
    """Inference images per second on one batch from the loader, timed after `warmup` passes."""
    model.eval()
    images, _ = next(iter(data_loader))
    images = images.to(device, non_blocking=True)
    with autocast(device, amp_dtype):
        for _ in range(warmup):
            model(images)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iterations):
            model(images)
        if device.type == 'cuda':
            torch.cuda.synchronize()
    images_per_second = iterations * images.shape[0] / (time.perf_counter() - start)
    logger.info(f'batch_size {images.shape[0]} throughput {images_per_second:.1f} img/s '
                f'({warmup} warm-up and {iterations} timed iterations)')
    return images_per_second
