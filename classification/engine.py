"""One training epoch, evaluation and throughput measurement."""
import math
import time
from contextlib import nullcontext
from typing import Callable, Dict, Iterable, Optional

import torch
from timm.data import Mixup
from timm.utils import ModelEmaV3, NativeScaler, accuracy, dispatch_clip_grad

import utils


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """Mixed precision on CUDA when an AMP dtype is set; full precision otherwise."""
    if amp_dtype is None or device.type != 'cuda':
        return nullcontext()
    return torch.autocast(device_type='cuda', dtype=amp_dtype)


def train_one_epoch(
        model: torch.nn.Module,
        criterion: Callable,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        epoch: int,
        loss_scaler: Optional[NativeScaler],
        amp_dtype: Optional[torch.dtype],
        max_norm: Optional[float] = None,
        model_ema: Optional[ModelEmaV3] = None,
        mixup_fn: Optional[Mixup] = None,
        print_freq: int = 10,
) -> Dict[str, float]:
    model.train()
    metric_logger = utils.MetricLogger()
    metric_logger.add_meter('lr', utils.SmoothedValue(window_size=1, fmt='{value:.6f}'))
    header = f'Epoch: [{epoch}]'
    for step, (samples, targets) in enumerate(metric_logger.log_every(data_loader, print_freq, header)):
        samples = samples.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)

        with autocast(device, amp_dtype):
            outputs = model(samples)
            loss = criterion(outputs, targets)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f'loss is {loss_value} at epoch {epoch}, step {step}: stopping. The checkpoint of the last '
                f'finished epoch is untouched; lower --lr, keep --clip-grad on, or use --amp-dtype bfloat16.')

        optimizer.zero_grad()
        if loss_scaler is not None:
            loss_scaler(loss, optimizer, clip_grad=max_norm, parameters=model.parameters())
        else:
            loss.backward()
            if max_norm:
                dispatch_clip_grad(model.parameters(), max_norm)
            optimizer.step()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        if model_ema is not None:
            model_ema.update(model)

        metric_logger.update(loss=loss_value, lr=optimizer.param_groups[0]['lr'])
    metric_logger.synchronize_between_processes()
    utils.logger.info(f'Averaged stats: {metric_logger}')
    return {name: meter.global_avg for name, meter in metric_logger.meters.items()}


@torch.no_grad()
def evaluate(
        data_loader: Iterable,
        model: torch.nn.Module,
        device: torch.device,
        amp_dtype: Optional[torch.dtype] = None,
) -> Dict[str, float]:
    criterion = torch.nn.CrossEntropyLoss()
    metric_logger = utils.MetricLogger()
    model.eval()
    for images, targets in metric_logger.log_every(data_loader, 10, 'Test:'):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            output = model(images)
            loss = criterion(output, targets)
        acc1, acc5 = accuracy(output, targets, topk=(1, 5))  # top-5 is top-k with fewer than 5 classes
        batch_size = images.shape[0]
        metric_logger.meters['loss'].update(loss.item(), n=batch_size)
        metric_logger.meters['acc1'].update(acc1.item(), n=batch_size)
        metric_logger.meters['acc5'].update(acc5.item(), n=batch_size)
    metric_logger.synchronize_between_processes()
    utils.logger.info(f'* Acc@1 {metric_logger.acc1.global_avg:.3f} Acc@5 {metric_logger.acc5.global_avg:.3f} '
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
    utils.logger.info(f'batch_size {images.shape[0]} throughput {images_per_second:.1f} img/s '
                      f'({warmup} warm-up and {iterations} timed iterations)')
    return images_per_second
