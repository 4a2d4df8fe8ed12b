//! One unit through the pipeline (placeholder: being written).
