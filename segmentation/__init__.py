"""MMSegmentation task code: the toy ADE20K set and the Semantic FPN demo.

The backbone, the checkpoint allow-list and the runner are shared with detection and live in
`openmmlab` (configs import it); nothing here imports `detection` or mmdet, so an
MMSegmentation-only installation works.

- `segmentation.toy_data`: `make_toy_ade20k`, a small semantic-segmentation set in the ADE20K layout.
- `segmentation.demo`: `run_seg_demo`, Semantic FPN fine-tuned and evaluated on it.
"""
