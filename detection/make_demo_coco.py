"""Generate a small COCO-format detection/instance-segmentation dataset of coloured shapes.

    python make_demo_coco.py --out data/demo_coco
writes train2017/, val2017/ and annotations/instances_{train,val}2017.json (boxes and polygon masks), the
layout of data/coco/, so a config only needs `data_root` and the class names (`scalablevit.demo_data.COCO_CLASSES`)
changed.
"""
from scalablevit.demo_data import demo_dataset_main, make_demo_coco

if __name__ == '__main__':
    demo_dataset_main(make_demo_coco, __doc__, default_out='data/demo_coco')
