"""Generate a small semantic-segmentation dataset in ADE20K's layout and label convention.

    python make_demo_ade.py --out data/demo_ade
writes ADEChallengeData2016/images/{training,validation}/*.jpg and annotations/{training,validation}/*.png.
Labels follow ADE20K: 0 is "other" (ignored through `reduce_zero_label`), 1..150 are the classes; here the
background is class 1 (wall), the shapes are classes 2-4, and a border strip is left at 0.
"""
from scalablevit.demo_data import demo_dataset_main, make_demo_ade

if __name__ == '__main__':
    demo_dataset_main(make_demo_ade, __doc__, default_out='data/demo_ade')
