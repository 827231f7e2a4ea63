// Command meshctl inspects and checks Nodemesh policy from the command line.
//
// main stays thin: everything runs through run, which tests call in-process.
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
