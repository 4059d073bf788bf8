"""PyTorch + transformers side of `cargo bench --bench embed` (run by it, in its own venv).

    python embed_torch.py make MODEL_DIR
        writes a ViT-B/32-sized CLIPModel with random weights (seed 0) as save_pretrained does
    python embed_torch.py time MODEL_DIR IMAGE_DIR BATCHES OUT_FEATURES
        prints one JSON line per batch size: images/s end to end (open, CLIPImageProcessor,
        get_image_features) and steady state (get_image_features on prepared pixel values,
        after a warm-up), and writes the features of every image (f32, file order) to
        OUT_FEATURES for the benchmark's agreement check.
"""

import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel


def pooled(out):
    # get_image_features gives a tensor, or (in some transformers versions) an output object.
    return out if torch.is_tensor(out) else out.pooler_output


def make(model_dir):
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig())  # the defaults are ViT-B/32's sizes
    model.save_pretrained(model_dir)
    CLIPImageProcessor().save_pretrained(model_dir)


def composite(path):
    # As mvc (and the study): RGBA onto white, then the processor's RGB pipeline.
    img = Image.open(path)
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def time_it(model_dir, image_dir, batches, out_features):
    torch.set_grad_enabled(False)
    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = CLIPImageProcessor.from_pretrained(model_dir)
    paths = sorted(os.path.join(image_dir, f) for f in os.listdir(image_dir))
    n = len(paths)
    pixels = processor(images=[composite(p) for p in paths], return_tensors="pt")["pixel_values"]
    model.get_image_features(pixel_values=pixels[:2])  # warm-up
    features = None
    for batch in batches:
        start = time.perf_counter()
        for i in range(0, n, batch):
            images = [composite(p) for p in paths[i : i + batch]]
            x = processor(images=images, return_tensors="pt")["pixel_values"]
            model.get_image_features(pixel_values=x)
        end_to_end = n / (time.perf_counter() - start)
        start = time.perf_counter()
        outs = []
        for i in range(0, n, batch):
            outs.append(model.get_image_features(pixel_values=pixels[i : i + batch]))
        steady = n / (time.perf_counter() - start)
        if features is None:
            features = torch.cat([pooled(o) for o in outs])
        print(json.dumps({"batch": batch, "end_to_end": end_to_end, "steady": steady}), flush=True)
    features.numpy().astype(np.float32).tofile(out_features)
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    else:
        time_it(sys.argv[2], sys.argv[3], [int(b) for b in sys.argv[4].split(",")], sys.argv[5])
