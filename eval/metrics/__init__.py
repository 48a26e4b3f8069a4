"""Metrics from files: pose (COCO keypoint AP with Goliath OKS sigmas), seg (mIoU), depth, normals.

Each metric is a pure function over arrays or parsed JSON plus a `*_from_files` reader; the `hv eval`
commands print the returned dict as one JSON object.

    hv eval pose --gt gt.json --pred results.json --keypoints all
    hv eval seg --gt gt_seg/ --pred pred_seg/ --vocab goliath28
    hv eval depth --gt gt_depth/ --pred pred_depth/
    hv eval normal --gt gt_normal/ --pred pred_normal/
"""


class MetricInputError(ValueError):
    """Input a metric cannot be computed on (mismatched names or sizes, missing fields, nothing valid).

    The message names the file, image or annotation at fault."""
