//! Rotating-sequencer atomic broadcast (in progress).
