#compdef prism

_prism_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _PRISM_COMPLETE=complete_zsh prism)
}

compdef _prism_completion prism
