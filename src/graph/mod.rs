//! Graph analysis over the ledger: the who-talks-to-whom graph, proposals, diffs and reports.
