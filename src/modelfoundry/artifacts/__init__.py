"""What a run leaves on disk: the run directory's layout (RunDir, ExportDir) and its typed records."""
