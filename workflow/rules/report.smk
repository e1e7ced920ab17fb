# Figures and the PDF report.


rule figures:
    input:
        COMMON_DEPS,
        "stages/figures.py",
        "stages/evaluate_detector.py",
        DETECTOR_METRICS,
        PER_IMAGE_CSV,
        PR_CURVES_CSV,
        DETECTOR_CURVES,
        SPLITS_DIR,
        DETECTOR_PREDICTIONS,
    output:
        directory(FIGURES_DIR),
    params:
        figures=config["figures"],
        focal_gamma=config["detector"]["focal"]["gamma"],
        iou_score_threshold=config["evaluate"]["iou_score_threshold"],
        paper_train_mean_iou=config["report"]["paper_train_mean_iou"],
    log:
        f"logs/{FIGURES_DIR}.log",
    shell:
        f"python -m stages.figures {PARAMS_ARGS} --metrics {DETECTOR_METRICS} --per-image {PER_IMAGE_CSV}"
        f" --pr-curves {PR_CURVES_CSV} --training {DETECTOR_CURVES} --splits {SPLITS_DIR}"
        f" --predictions {DETECTOR_PREDICTIONS} --out {FIGURES_DIR} 2>&1 | tee {{log}}"


rule report:
    input:
        COMMON_DEPS,
        "stages/report.py",
        "stages/evaluate_detector.py",
        "stages/download.py",
        DETECTOR_METRICS,
        DATA_SUMMARY,
        SPLITS_DIR,
        FIGURES_DIR,
    output:
        REPORT_PDF,
    params:
        # The report prints every setting, so any change rebuilds it.
        all_params=config,
    log:
        f"logs/{REPORT_PDF}.log",
    shell:
        f"python -m stages.report {PARAMS_ARGS} --metrics {DETECTOR_METRICS} --data-summary {DATA_SUMMARY}"
        f" --splits {SPLITS_DIR} --figures {FIGURES_DIR} --dvc-lock dvc.lock --out {REPORT_PDF} 2>&1 | tee {{log}}"
