//! Dead-lettering: x-death headers and cycle detection (filled in the next commit).
