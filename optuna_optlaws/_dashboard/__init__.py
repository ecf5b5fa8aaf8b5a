"""Private helpers of :mod:`optuna_optlaws.dashboard`: trial data and plotly figures."""
