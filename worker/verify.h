/* Mode "verify": compares sluice's tables in two databases (the configured
 * one and another, typically a replay's scratch database) by their
 * natural keys. */
#ifndef SLUICE_VERIFY_H
#define SLUICE_VERIFY_H

/* Prints, per table, the rows and a checksum on each side and the first
 * keys that differ. Returns the exit status: 0 every table equal, 1 a
 * difference, 2 a database that cannot be reached or read. */
int verify_run(const char *here_dsn, const char *against_dsn);

#endif
