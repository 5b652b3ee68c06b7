from anamnesis.service.cli import main

main()
