# Figures and the PDF report.


rule figures:
    input:
        COMMON_DEPS,
        "stages/figures.py",
        "stages/evaluate_detector.py",
        "stages/detector.py",
        "stages/kerascompat.py",
        "stages/metrics.py",
        DETECTOR_METRICS,
        PER_IMAGE_CSV,
        PR_CURVES_CSV,
        DETECTOR_CURVES,
        SPLITS_DIR,
        DATASET["images"],
        DETECTOR_PREDICTIONS,
    output:
        directory(FIGURES_DIR),
    params:
        figures=config["figures"],
        focal_gamma=config["detector"]["focal"]["gamma"],
        iou_score_threshold=config["evaluate"]["iou_score_threshold"],
        paper_train_mean_iou=config["report"]["paper_train_mean_iou"],
        dataset_format=config["dataset"]["format"],
    log:
        f"logs/{FIGURES_DIR}.log",
    shell:
        f"python -m stages.figures {PARAMS_ARGS} --metrics {DETECTOR_METRICS} --per-image {PER_IMAGE_CSV}"
        f" --pr-curves {PR_CURVES_CSV} --training {DETECTOR_CURVES} --splits {SPLITS_DIR}"
        f" --predictions {DETECTOR_PREDICTIONS} --out {FIGURES_DIR} 2>&1 | tee {{log}}"


rule classifier_figures:
    input:
        COMMON_DEPS,
        "stages/classifier_figures.py",
        "stages/figures.py",
        "stages/evaluate_classifier.py",
        "stages/smile_baseline.py",
        "stages/evaluate_detector.py",
        "stages/metrics.py",
        "stages/classifier.py",
        "stages/detector.py",
        "stages/kerascompat.py",
        CLASSIFIER_METRICS,
        CLASSIFIER_PREDICTIONS,
        CLASSIFIER_CURVES.values(),
        SMILES_SPLITS_DIR,
        SMILES_IMAGES.values(),
    output:
        directory(CLASSIFIER_FIGURES_DIR),
    params:
        evaluate_classifier=config["evaluate_classifier"],
    log:
        f"logs/{CLASSIFIER_FIGURES_DIR}.log",
    shell:
        f"python -m stages.classifier_figures {PARAMS_ARGS} --metrics {CLASSIFIER_METRICS}"
        f" --predictions {CLASSIFIER_PREDICTIONS} --training {CLASSIFIER_CURVES_ROOT} --splits {SMILES_SPLITS_DIR}"
        f" --out {CLASSIFIER_FIGURES_DIR} 2>&1 | tee {{log}}"


rule report:
    input:
        COMMON_DEPS,
        "stages/report.py",
        "stages/evaluate_detector.py",
        "stages/download.py",
        "stages/evaluate_classifier.py",
        "stages/smile_baseline.py",
        "stages/metrics.py",
        DETECTOR_METRICS,
        DATA_SUMMARY,
        SPLITS_DIR,
        FIGURES_DIR,
        BASELINES_METRICS,
        SMILES_SUMMARY,
        CLASSIFIER_METRICS,
        CLASSIFIER_FIGURES_DIR,
        "stages/focal_sweep.py",
        "stages/classifier.py",
        "stages/detector.py",
        "stages/figures.py",
        "stages/kerascompat.py",
        FOCAL_SWEEP_METRICS,
        FOCAL_SWEEP_FIGURES,
    output:
        REPORT_PDF,
    params:
        # The report prints every setting, so any change rebuilds it.
        all_params=config,
    log:
        f"logs/{REPORT_PDF}.log",
    shell:
        f"python -m stages.report {PARAMS_ARGS} --metrics {DETECTOR_METRICS} --data-summary {DATA_SUMMARY}"
        f" --splits {SPLITS_DIR} --figures {FIGURES_DIR} --baselines {BASELINES_METRICS}"
        f" --smiles-data {SMILES_SUMMARY}"
        f" --classifier-metrics {CLASSIFIER_METRICS} --classifier-figures {CLASSIFIER_FIGURES_DIR}"
        f" --focal-sweep {FOCAL_SWEEP_METRICS} --focal-sweep-figures {FOCAL_SWEEP_FIGURES}"
        f" --dvc-lock dvc.lock --out {REPORT_PDF} 2>&1 | tee {{log}}"
