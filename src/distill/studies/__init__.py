"""Studies built on finished runs, each a notebook whose steps live here: provenance
(`provenance`, the tests; `provenance_check`, notebook 05 and `distill provenance`), the
provenance study (`provenance_study`, notebook 06; `detection`, its statistics), teacher
drift (`drift_study`, notebook 07; `drift`, its figures), recursive collapse
(`collapse_study`, notebook 08; `collapse`, its metrics). `params` declares their
sections, `runner` reads a study file or folder into one, `shared` is what 06-08 share."""
