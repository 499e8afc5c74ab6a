"""Shadow scoring: a candidate model version scored beside the live one, compared, then promoted or
rolled back in one step (docs/shadow.md). No Faust in here."""
