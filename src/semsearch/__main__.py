from semsearch.cli.main import main

main()
