"""Every MLflow tag biosig writes, one constant each: runs, versions and the UI are searched by these
names, so they are spelled in one place (`biosig.field.*` and per-fold `biosig.split.fold<i>.digest`
are formatted from a prefix)."""

ARCH_TAG = "biosig.arch"
BEST_EPOCH_TAG = "biosig.best_epoch"
CALIBRATED_FROM_TAG = "biosig.calibrated_from"
CALIBRATION_TAG = "biosig.calibration"
CHANNEL_MAPPING_TAG = "biosig.channel_mapping"
CHANNELS_DROPPED_TAG = "biosig.channels_dropped"
CLASS_WEIGHTS_TAG = "biosig.class_weights"
COLLAPSED_CLASSES_TAG = "biosig.collapsed_classes"
COMMAND_TAG = "biosig.command"
COMPARE_METRIC_TAG = "biosig.compare.metric"
COMPARE_SPLIT_DIGEST_TAG = "biosig.compare.split_digest"
CV_TAG = "biosig.cv"
CV_EVIDENCE_RUN_TAG = "biosig.cv.evidence_run"
CV_FOLD_TAG = "biosig.cv.fold"
CV_FOLDS_TAG = "biosig.cv.folds"
CV_REFIT_TAG = "biosig.cv.refit"
DATASET_CHANNELS_TAG = "biosig.dataset.channels"
DATASET_DIGEST_TAG = "biosig.dataset.digest"
DATASET_ERRORS_TAG = "biosig.dataset.errors"
DATASET_MODALITY_TAG = "biosig.dataset.modality"
DATASET_NAME_TAG = "biosig.dataset.name"
DATASET_URI_TAG = "biosig.dataset.uri"
DATASET_PART_TAG = "biosig.dataset.part"  # i/n: a log_dataset run that built one slice of a sharded dataset
DATASET_WARNINGS_TAG = "biosig.dataset.warnings"
ERROR_TAG = "biosig.error"
ERROR_TYPE_TAG = "biosig.error_type"
EVALUATE_MODEL_TAG = "biosig.evaluate.model"
EVALUATE_REASON_TAG = "biosig.evaluate.reason"
EVALUATE_REGISTERED_TAG = "biosig.evaluate.registered"
EVALUATE_VERSION_TAG = "biosig.evaluate.version"
# Operational tags, one namespace (biosig.process.*) so the UI can hide them as a group: who runs the run
HEARTBEAT_TAG = "biosig.process.heartbeat"  # epoch seconds of the last sign of life of the process named by host + pid
HOST_TAG = "biosig.process.host"
IMPORTED_BY_TAG = "biosig.imported.by"  # import-checkpoint: user@host that imported the weights
IMPORTED_FROM_TAG = "biosig.imported.from"  # import-checkpoint: the original file path
IMPORTED_SHA256_TAG = "biosig.imported.sha256"  # import-checkpoint: sha256 of the weights file (the identity)
IMPORTED_EMA_TAG = "biosig.imported.ema"  # import-checkpoint: true when the file's EMA copy was imported
IMPORTED_CLASS_TAG = "biosig.imported.class"  # import-checkpoint: the granite-tsfm class of a Hugging Face folder
IMPORTED_WRAPPERS_TAG = "biosig.imported.wrappers"  # import-checkpoint: training-framework wrappers recognised
KIND_TAG = "biosig.kind"
MODEL_NAME_TAG = "biosig.model_name"
NORMALISATION_TAG = "biosig.normalisation"
NOTE_CHANNELS_TAG = "biosig.note.channels"
NOTE_NORMALISATION_TAG = "biosig.note.normalisation"
PARENT_NAME_TAG = "biosig.parent.name"
PARENT_RUN_ID_TAG = "biosig.parent.run_id"
PARENT_URI_TAG = "biosig.parent.uri"
PARENT_VERSION_TAG = "biosig.parent.version"
PID_TAG = "biosig.process.pid"
PRED_VAR_RATIO_TAG = "biosig.pred_var_ratio"
PROMOTE_DECIDED_AT_TAG = "biosig.promote.decided_at"  # epoch ms, set under the lock: the audit log's order
PROMOTE_DECISION_TAG = "biosig.promote.decision"
PROMOTE_MODEL_TAG = "biosig.promote.model"
PROMOTE_POLICY_TAG = "biosig.promote.policy"
PROMOTE_REASON_TAG = "biosig.promote.reason"
PROMOTE_REPLACED_BY_TAG = "biosig.promote.replaced_by"  # a later promotion moved the alias on before this one ended
PROMOTE_TARGET_TAG = "biosig.promote.target"
PROMOTE_VERSION_TAG = "biosig.promote.version"
REFERENCE_TAG = "biosig.reference"
REFERENCE_CHOICE_TAG = "biosig.reference.choice"
REGISTERED_MODEL_TAG = "biosig.registered_model"
CANDIDATE_TAG = "biosig.candidate"  # finetune: taken | declined (registry.candidate)
CANDIDATE_REASON_TAG = "biosig.candidate.reason"
REGISTERED_VERSION_TAG = "biosig.registered_version"
RESUMED_AT_EPOCH_TAG = "biosig.resumed_at_epoch"
RESUMED_FROM_TAG = "biosig.resumed_from"
RUN_ID_TAG = "biosig.run_id"
SELECTION_FALLBACK_TAG = "biosig.selection_fallback"
SPLIT_DIGEST_TAG = "biosig.split.digest"
SPLIT_FOLDS_TAG = "biosig.split.folds"
SPLIT_SOURCE_TAG = "biosig.split.source"
TASK_TAG = "biosig.task"
TEST_DIGEST_TAG = "biosig.test.digest"
VAL_LOSS_TAG = "biosig.val_loss"
WARNING_TAG = "biosig.warning"
WORLD_SIZE_TAG = "biosig.world_size"

# Families formatted with a key: FIELD_TAG_PREFIX + "context_length", TEST_METRIC_TAG_PREFIX + "auroc", …
FIELD_TAG_PREFIX = "biosig.field."  # conventional-name fields on a registered version
TEST_METRIC_TAG_PREFIX = "biosig.test."  # test metrics on a registered version
PROMOTE_TARGET_TAG_PREFIX = "biosig.promote."  # finetune promote=TARGET: the decision for that target


#: The same, as runs written before the biosig.process namespace spelled them (still read by liveness).
LEGACY_PROCESS_TAGS = {HOST_TAG: "biosig.host", PID_TAG: "biosig.pid", HEARTBEAT_TAG: "biosig.heartbeat"}


def fold_digest_tag(fold: int) -> str:
    """The split-manifest digest tag of cross-validation fold `fold`."""
    return f"biosig.split.fold{fold}.digest"

# MLflow's own tags that biosig sets: the run name and the run description shown in the UI.
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"
