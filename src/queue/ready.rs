//! The ready-message container (filled in a later commit).
