from transferlab.cli.app import main

main()
