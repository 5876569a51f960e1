from arlkit.cli import main

main()
