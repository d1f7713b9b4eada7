"""MMDetection task code: the toy COCO set and the Mask R-CNN demo.

The backbone, the checkpoint allow-list and the runner are shared with segmentation and live in
`openmmlab` (configs import it); nothing here imports `segmentation` or mmseg.

- `detection.toy_data`: `make_toy_coco`, a small instance-segmentation set in the COCO layout.
- `detection.demo`: `run_det_demo`, Mask R-CNN fine-tuned and evaluated on it.
"""
