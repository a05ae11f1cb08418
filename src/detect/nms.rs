//! The two non-maximum suppressions facenet-pytorch's MTCNN uses.

/// torchvision's `nms` (CPU): boxes visited by descending score (a stable sort: ties keep input order);
/// a box is dropped when its IoU with a kept one is > `threshold`; areas are (x2 − x1)·(y2 − y1).
/// Returns the kept indices in descending score order.
pub fn nms_iou(boxes: &[[f32; 4]], scores: &[f32], threshold: f64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let areas: Vec<f32> = boxes.iter().map(|b| (b[2] - b[0]) * (b[3] - b[1])).collect();
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let bi = boxes[i];
        for &j in &order[pos + 1..] {
            if suppressed[j] {
                continue;
            }
            let bj = boxes[j];
            let iw = (bi[2].min(bj[2]) - bi[0].max(bj[0])).max(0.0);
            let ih = (bi[3].min(bj[3]) - bi[1].max(bj[1])).max(0.0);
            let inter = iw * ih;
            let ovr = inter / (areas[i] + areas[j] - inter);
            if ovr as f64 > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// facenet-pytorch's `nms_numpy(.., 'Min')`: repeatedly takes the highest score (among equal scores the
/// last index, as numpy's ascending argsort then `I[-1]`), keeps the others whose intersection over the
/// smaller area is ≤ `threshold`; areas are (x2 − x1 + 1)·(y2 − y1 + 1) (pixel-inclusive).
pub fn nms_min(boxes: &[[f32; 4]], scores: &[f32], threshold: f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let area = |b: &[f32; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut keep = Vec::new();
    while let Some(i) = order.pop() {
        keep.push(i);
        let bi = boxes[i];
        order.retain(|&j| {
            let bj = boxes[j];
            let w = (bi[2].min(bj[2]) - bi[0].max(bj[0]) + 1.0).max(0.0);
            let h = (bi[3].min(bj[3]) - bi[1].max(bj[1]) + 1.0).max(0.0);
            w * h / area(&bi).min(area(&bj)) <= threshold
        });
    }
    keep
}
