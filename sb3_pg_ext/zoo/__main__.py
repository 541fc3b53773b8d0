"""``python -m sb3_pg_ext.zoo <train|enjoy|plot_train|plot_from_file|all_plots> ...``"""

from sb3_pg_ext.zoo.cli import main

if __name__ == "__main__":
    main()
