/* log.c -- nllmd_log (log.h): one line on stderr per call, the job's name
 * first when there is one. Lines up to 2 KiB; longer messages are cut.
 */
#include <stdarg.h>
#include <stdio.h>

#include "log.h"

void nllmd_log(nllmd_t *d, const char *job, const char *fmt, ...)
{
    (void)d;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (job)
        fprintf(stderr, "nllmd: job %s: %s\n", job, msg);
    else
        fprintf(stderr, "nllmd: %s\n", msg);
}
