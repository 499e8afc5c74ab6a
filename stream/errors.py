"""The one error type the user sees: something they can fix (a flag, a file, a setting, a
dependency that refuses or cannot be reached). `tecaflow` prints it in one line and exits 2;
every other exception is a bug and keeps its traceback."""


class UserError(Exception):
    pass
