from mssante_operator.cli import main

main()
