// The PKCS#11 2.40 header from p11-kit; every hsm/ file includes it through here.
#pragma once

#include <p11-kit/pkcs11.h>
