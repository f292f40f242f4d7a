"""Generate a small semantic-segmentation dataset in Cityscapes' layout and label convention.

    python make_demo_cityscapes.py --out data/cityscapes_demo
writes leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png and gtFine/{train,val}/<city>/
<name>_gtFine_labelTrainIds.png, what MMSegmentation's CityscapesDataset reads. Labels are train ids (0..18,
255 ignored): the background is road (0), the shapes are person, car and traffic sign (11, 13, 7), and a border
strip is 255. The pictures are those of make_demo_ade.py.
"""
from scalablevit.demo_data import demo_dataset_main, make_demo_cityscapes

if __name__ == '__main__':
    demo_dataset_main(make_demo_cityscapes, __doc__, default_out='data/cityscapes_demo')
