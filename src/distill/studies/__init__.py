"""Studies built on finished runs: provenance (`provenance`), teacher drift (`drift`),
recursive collapse (`collapse`), and the runner that executes a study file (`runner`)."""
