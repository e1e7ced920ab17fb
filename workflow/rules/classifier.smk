# Happy / non-happy classifiers: one per fold and dataset, and a final one on all GENKI-4K crops.

CLASSIFIER_CODE = [
    "stages/train_classifier.py",
    "stages/classifier_training.py",
    "stages/curves.py",
    "stages/classifier.py",
    "stages/kerascompat.py",
    "stages/download.py",
]


rule train_classifier_genki4k:
    input:
        COMMON_DEPS,
        CLASSIFIER_CODE,
        SMILES_SPLITS_DIR,
        SMILES_IMAGES["genki4k"],
    output:
        directory(CLASSIFIER_MODELS["genki4k"]),
        directory(CLASSIFIER_CURVES["genki4k"]),
    params:
        classifier=config["classifier"],
    log:
        f"logs/{CLASSIFIER_MODELS['genki4k']}.log",
    shell:
        f"python -m stages.train_classifier {PARAMS_ARGS} --samples {samples_csv('genki4k')}"
        f" --out {CLASSIFIER_MODELS['genki4k']} --curves {CLASSIFIER_CURVES['genki4k']} 2>&1 | tee {{log}}"


rule train_classifier_smilesmiled:
    input:
        COMMON_DEPS,
        CLASSIFIER_CODE,
        SMILES_SPLITS_DIR,
        SMILES_IMAGES["smilesmiled"],
    output:
        directory(CLASSIFIER_MODELS["smilesmiled"]),
        directory(CLASSIFIER_CURVES["smilesmiled"]),
    params:
        classifier=config["classifier"],
    log:
        f"logs/{CLASSIFIER_MODELS['smilesmiled']}.log",
    shell:
        f"python -m stages.train_classifier {PARAMS_ARGS} --samples {samples_csv('smilesmiled')}"
        f" --out {CLASSIFIER_MODELS['smilesmiled']} --curves {CLASSIFIER_CURVES['smilesmiled']} 2>&1 | tee {{log}}"


rule train_final_classifier:
    input:
        COMMON_DEPS,
        CLASSIFIER_CODE,
        SMILES_SPLITS_DIR,
        SMILES_IMAGES["genki4k"],
    output:
        directory(FINAL_CLASSIFIER),
        directory(FINAL_CLASSIFIER_CURVES),
    params:
        classifier=config["classifier"],
        crop=config["smiles"]["crop"],
    log:
        f"logs/{FINAL_CLASSIFIER}.log",
    shell:
        f"python -m stages.train_classifier {PARAMS_ARGS} --samples {samples_csv('genki4k')} --final"
        f" --out {FINAL_CLASSIFIER} --curves {FINAL_CLASSIFIER_CURVES} 2>&1 | tee {{log}}"
