# The CPU smoke runs' schedule, chained by the dataset bases beside it (demo_ade.py, demo_cityscapes.py):
# 4 iterations, validated and saved at the end, a log line every 2 iterations. Only `demo_*` names (see
# demo_ade.py).
demo_train_cfg = dict(max_iters=4, val_interval=4)
demo_default_hooks = dict(checkpoint=dict(interval=4), logger=dict(interval=2))
