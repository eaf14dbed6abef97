// The workload's Landlock domain: declared in wire/landlock.h, which the agent's in-process PID 1 of one-shot
// jails shares with sandbox-init (see there).
#ifndef SBX_SANDBOX_INIT_LANDLOCK_H_
#define SBX_SANDBOX_INIT_LANDLOCK_H_

#include "wire/landlock.h"

#endif  // SBX_SANDBOX_INIT_LANDLOCK_H_
