"""Fuzzing ttc's input readers as an outsider would: mutations of real prog.bin files, disassembly,
printed IR, hardware TOML and model files, each run through the reader ttc uses for that kind of file.

    python -m ttc.fuzz --inputs 100000 --seed 0       # or `make fuzz`

`seeds` makes the seed artefacts, `mutators` the mutations, `targets` the five readers, `engine` the
loop and its verdicts (a ttc error is a pass; any other exception, a run over the time limit or a file
written is a failure, counted once per (exception type, innermost frame))."""
