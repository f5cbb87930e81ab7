"""Symbolic context from hand-made COCO files: captions, normalised boxes, errors that name the file."""

import json

import pytest

from llava_lite.symbolic import load_coco


def _write(tmp_path, captions, instances=None):
    cap = tmp_path / "captions.json"
    cap.write_text(json.dumps(captions))
    inst = None
    if instances is not None:
        inst = tmp_path / "instances.json"
        inst.write_text(json.dumps(instances))
    return cap, inst


IMAGES = [
    {"id": 7, "file_name": "000000000007.jpg", "width": 200, "height": 100},
    {"id": 9, "file_name": "000000000009.jpg", "width": 640, "height": 480},
]
CAPTIONS = {
    "images": IMAGES,
    "annotations": [
        {"id": 1, "image_id": 7, "caption": "A cat sleeps on a sofa. "},
        {"id": 2, "image_id": 7, "caption": "A grey cat curled up on cushions."},
        {"id": 3, "image_id": 9, "caption": "Two people ride bikes."},
    ],
}
INSTANCES = {
    "images": IMAGES,
    "categories": [{"id": 17, "name": "cat"}, {"id": 63, "name": "couch"}],
    "annotations": [
        {"id": 11, "image_id": 7, "category_id": 17, "bbox": [50, 25, 100, 50]},
        {"id": 12, "image_id": 7, "category_id": 63, "bbox": [0, 10, 250, 90]},  # overflows right edge
    ],
}


def test_captions_and_boxes_render_as_in_the_paper(tmp_path):
    cap, inst = _write(tmp_path, CAPTIONS, INSTANCES)
    contexts = {c.image_id: c for c in load_coco(cap, inst)}
    cat = contexts[7]
    assert cat.file_name == "000000000007.jpg"
    assert cat.captions == ("A cat sleeps on a sofa. ", "A grey cat curled up on cushions.")
    assert cat.render() == (
        "A cat sleeps on a sofa.\n"
        "A grey cat curled up on cushions.\n"
        "\n"
        "cat: [0.250, 0.250, 0.750, 0.750]\n"
        "couch: [0.000, 0.100, 1.000, 1.000]"
    )
    assert cat.render(boxes=False) == "A cat sleeps on a sofa.\nA grey cat curled up on cushions."
    assert (
        cat.render(captions=False) == "cat: [0.250, 0.250, 0.750, 0.750]\ncouch: [0.000, 0.100, 1.000, 1.000]"
    )
    assert contexts[9].objects == ()
    assert contexts[9].render() == "Two people ride bikes."


def test_captions_only_without_instances(tmp_path):
    cap, _ = _write(tmp_path, CAPTIONS)
    contexts = load_coco(cap)
    assert [c.image_id for c in contexts] == [7, 9]
    assert all(c.objects == () for c in contexts)


def test_unknown_category_and_image_are_errors_naming_the_file(tmp_path):
    bad = json.loads(json.dumps(INSTANCES))
    bad["annotations"][0]["category_id"] = 99
    cap, inst = _write(tmp_path, CAPTIONS, bad)
    with pytest.raises(ValueError, match=r"instances\.json.*annotation 11.*unknown category 99"):
        load_coco(cap, inst)
    bad = json.loads(json.dumps(INSTANCES))
    bad["annotations"][1]["image_id"] = 1234
    bad["images"] = IMAGES
    cap, inst = _write(tmp_path, {"images": IMAGES, "annotations": []}, bad)
    with pytest.raises(ValueError, match="unknown image 1234"):
        load_coco(cap, inst)


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "captions_broken.json"
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"captions_broken\.json: not valid JSON"):
        load_coco(path)
