# The focal-loss study: one job per pair of focal_sweep.gammas x focal_sweep.alphas, each in
# its own folder, so `snakemake --cores N` trains N / focal_sweep.threads settings side by side.

SWEEP_RESULTS = "reports/sweep"
FOCAL_SWEEP_METRICS = "reports/metrics/focal_sweep.json"
FOCAL_SWEEP_FIGURES = "reports/focal_sweep"
# Named as dvc.yaml's matrix names them: the numbers as written in params.yaml.
SWEEP_SETTINGS = [
    f"gamma{gamma}-alpha{alpha}"
    for gamma in config["focal_sweep"]["gammas"]
    for alpha in config["focal_sweep"]["alphas"]
]


rule sweep_detector:
    wildcard_constraints:
        gamma=r"[0-9.]+",
        alpha=r"[0-9.]+",
    input:
        COMMON_DEPS,
        "stages/sweep_detector.py",
        "stages/train_detector.py",
        "stages/download.py",
        "stages/detector_training.py",
        "stages/curves.py",
        "stages/detector.py",
        "stages/kerascompat.py",
        "stages/evaluate_detector.py",
        "stages/metrics.py",
        "stages/anchor_check.py",
        SPLITS_DIR,
        DATASET["images"],
        CLASSES_CSV,
        DATA_SUMMARY,
    output:
        directory("data/sweep/gamma{gamma}-alpha{alpha}"),
        f"{SWEEP_RESULTS}/gamma{{gamma}}-alpha{{alpha}}.json",
    params:
        detector=config["detector"],
        evaluate=config["evaluate"],
        epochs=config["focal_sweep"]["epochs"],
        threads=config["focal_sweep"]["threads"],
    # focal_sweep.threads of 0 lets TensorFlow take every core.
    threads: config["focal_sweep"]["threads"] or workflow.cores
    log:
        "logs/data/sweep/gamma{gamma}-alpha{alpha}.log",
    shell:
        f"python -m stages.sweep_detector {PARAMS_ARGS} --gamma {{wildcards.gamma}} --alpha {{wildcards.alpha}}"
        f" --splits {SPLITS_DIR} --classes {CLASSES_CSV} --data-summary {DATA_SUMMARY}"
        f" --out data/sweep/gamma{{wildcards.gamma}}-alpha{{wildcards.alpha}}"
        f" --metrics {SWEEP_RESULTS}/gamma{{wildcards.gamma}}-alpha{{wildcards.alpha}}.json 2>&1 | tee {{log}}"


rule focal_sweep:
    input:
        COMMON_DEPS,
        "stages/focal_sweep.py",
        "stages/figures.py",
        "stages/evaluate_detector.py",
        "stages/metrics.py",
        "stages/detector.py",
        "stages/kerascompat.py",
        expand(f"{SWEEP_RESULTS}/{{setting}}.json", setting=SWEEP_SETTINGS),
    output:
        directory(FOCAL_SWEEP_FIGURES),
        FOCAL_SWEEP_METRICS,
    params:
        focal_sweep=config["focal_sweep"],
    log:
        f"logs/{FOCAL_SWEEP_METRICS}.log",
    shell:
        f"python -m stages.focal_sweep {PARAMS_ARGS} --results {SWEEP_RESULTS}"
        f" --metrics {FOCAL_SWEEP_METRICS} --figures {FOCAL_SWEEP_FIGURES} 2>&1 | tee {{log}}"
