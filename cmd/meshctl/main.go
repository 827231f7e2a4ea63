package main

import "os"

// main stays thin: run does the work, and tests call it in-process.
func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
