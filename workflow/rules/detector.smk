# One RetinaNet detector per fold, and a final one on all images for the predictor.


rule train_detector:
    input:
        COMMON_DEPS,
        "stages/train_detector.py",
        "stages/download.py",
        "stages/detector_training.py",
        "stages/curves.py",
        "stages/detector.py",
        "stages/kerascompat.py",
        "stages/anchor_check.py",
        SPLITS_DIR,
        DATASET["images"],
        CLASSES_CSV,
    output:
        directory(DETECTOR_MODELS),
        directory(DETECTOR_CURVES),
    params:
        detector=config["detector"],
    log:
        f"logs/{DETECTOR_MODELS}.log",
    shell:
        f"python -m stages.train_detector {PARAMS_ARGS} --splits {SPLITS_DIR} --classes {CLASSES_CSV}"
        f" --out {DETECTOR_MODELS} --curves {DETECTOR_CURVES} 2>&1 | tee {{log}}"


rule train_final_detector:
    input:
        COMMON_DEPS,
        "stages/train_detector.py",
        "stages/download.py",
        "stages/detector_training.py",
        "stages/curves.py",
        "stages/detector.py",
        "stages/kerascompat.py",
        "stages/anchor_check.py",
        ANNOTATIONS_CSV,
        DATASET["images"],
        CLASSES_CSV,
    output:
        directory(FINAL_DETECTOR),
        directory(FINAL_DETECTOR_CURVES),
    params:
        detector=config["detector"],
    log:
        f"logs/{FINAL_DETECTOR}.log",
    shell:
        f"python -m stages.train_detector {PARAMS_ARGS} --annotations {ANNOTATIONS_CSV} --classes {CLASSES_CSV}"
        f" --out {FINAL_DETECTOR} --curves {FINAL_DETECTOR_CURVES} 2>&1 | tee {{log}}"
